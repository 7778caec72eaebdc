"""End to end over DICOMweb: Orthanc pushes a study to the node's STOW-RS endpoint through its
own DICOMweb client (orthanc-dicomweb's "Servers"), the node takes it durably, routes it with
Orthanc-the-client as its source, and forwards it by STOW-RS to a DICOMweb-only archive."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pydicom
import pytest

from dicom_node.config import parse_config
from dicom_node.service.node import Node
from dicom_node.tools.orthanc import find_orthanc
from dicom_node.tools.synthetic import write_ct_series

from ..conftest import config_dict
from ..support.dicomweb_server import DicomwebArchive
from ..support.peers import start_orthanc, wait_for

pytestmark = pytest.mark.slow

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
TOKEN = "3c1e5a7b9d0f2a4c6e8b0d2f4a6c8e0b"


@pytest.mark.skipif(find_orthanc() is None or not DICOMWEB_PLUGIN.exists(), reason="needs orthanc and orthanc-dicomweb")
def test_orthanc_pushes_by_stow_rs_and_the_node_forwards_by_stow_rs(tmp_path: Path) -> None:
    archive = DicomwebArchive()
    (tmp_path / "orthanc.token").write_text(TOKEN)
    config = parse_config(config_dict(
        tmp_path,
        web={"enabled": True, "port": 0},
        peers=[{"name": "orthanc-web", "stow": True, "stow_token_file": str(tmp_path / "orthanc.token"),
                "ae_title": "ORTHANC_WEB"},
               {"name": "cloud", "dicomweb": {"url": archive.url}}],
        routes=[{"name": "from-orthanc", "match": {"calling_ae": "ORTHANC_WEB"}, "forward": ["cloud"]}],
        delivery={"retry_base_seconds": 0.5, "retry_max_seconds": 2, "interval_seconds": 0.2},
        completion={"series_stable_seconds": 1, "study_stable_seconds": 2, "sweep_interval_seconds": 0.2},
    ), "e2e-config")
    node = Node(config)
    node.start()
    assert node.web is not None
    orthanc = start_orthanc(tmp_path / "orthanc", extra_config={
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {
            "node": {"Url": f"http://127.0.0.1:{node.web.port}/dicomweb/orthanc-web/",
                     "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}}}}})
    try:
        files = write_ct_series(tmp_path / "ct", 8, rows=64, columns=64)
        for path in files:
            orthanc.upload(path)
        study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        request = urllib.request.Request(f"{orthanc.base_url}/dicom-web/servers/node/stow", method="POST",
                                         data=json.dumps({"Resources": [orthanc.study_id(study)]}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
            assert response.status == 200
        rows = node.index.query("SELECT calling_ae, count(*) AS n FROM instances GROUP BY calling_ae")
        assert [(r["calling_ae"], r["n"]) for r in rows] == [("ORTHANC_WEB", 8)]  # durable before Orthanc heard 200
        wait_for(lambda: len(archive.archive.stored) == 8, 60, "the forward to the DICOMweb archive")
        for path in files:
            sent = pydicom.dcmread(path)
            assert archive.archive.stored[str(sent.SOPInstanceUID)].PixelData == sent.PixelData
    finally:
        orthanc.stop()
        node.stop()
        archive.stop()
