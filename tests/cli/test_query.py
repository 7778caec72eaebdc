"""``dicom-node find``, ``retrieve`` and ``requests`` as an operator runs them, against Orthanc
(C-FIND, C-GET; QIDO-RS through its DICOMweb plugin for ``echo`` of a DICOMweb peer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import yaml

from dicom_node.storage.index import Index
from dicom_node.tools.orthanc import find_orthanc
from dicom_node.tools.synthetic import write_ct_series

from ..support import processes
from ..support.peers import free_port
from ..support.qr_peers import DICOMWEB_PLUGIN, start_qr_orthanc

pytestmark = pytest.mark.skipif(find_orthanc() is None or not DICOMWEB_PLUGIN.exists(), reason="needs orthanc-dicomweb")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return processes.run([sys.executable, "-m", "dicom_node.cli", *args], timeout=120)


def test_find_retrieve_and_request_from_the_command_line(tmp_path: Path) -> None:
    orthanc = start_qr_orthanc(tmp_path / "orthanc", "CLI_NODE", 1, dicomweb=True)
    try:
        files = write_ct_series(tmp_path / "ct", 3, rows=32, columns=32, patient_id="CLI42")
        for path in files:
            orthanc.upload(path)
        study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        config = tmp_path / "node.yaml"
        config.write_text(yaml.safe_dump({
            "node": {"ae_title": "CLI_NODE", "port": 0},
            "storage": {"path": str(tmp_path / "storage")}, "index": {"path": str(tmp_path / "index.sqlite")},
            "audit": {"path": str(tmp_path / "audit.jsonl")}, "web": {"enabled": False},
            "peers": [{"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.port,
                       "query": True, "retrieve": "get"},
                      {"name": "cloud", "query": True, "dicomweb": {"url": f"{orthanc.base_url}/dicom-web"}},
                      {"name": "down", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port(), "query": True}],
            "routes": [{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline"}],
            "pipelines": {"baseline": {"kind": "classical"}},
        }))
        found = run_cli("--config", str(config), "find", "--on", "pacs", "PatientID=CLI42", "--json")
        assert found.returncode == 0, found.stderr
        assert [r["StudyInstanceUID"] for r in json.loads(found.stdout)] == [study]
        table = run_cli("--config", str(config), "find", "--on", "cloud", "--level", "series", f"StudyInstanceUID={study}")
        assert table.returncode == 0 and "1 series match(es) on cloud" in table.stdout
        bad_key = run_cli("--config", str(config), "find", "--on", "pacs", "PatientIdent=1")
        assert bad_key.returncode == 2 and "DICOM keyword=value" in bad_key.stderr
        down = run_cli("--config", str(config), "find", "--on", "down")
        assert down.returncode == 3 and "cannot reach down" in down.stderr
        echo = run_cli("--config", str(config), "echo", "cloud")
        assert echo.returncode == 0 and "QIDO-RS cloud" in echo.stdout

        got = run_cli("--config", str(config), "retrieve", study, "--from", "pacs")
        assert got.returncode == 0, got.stderr
        assert "3 stored here (0 already held)" in got.stdout
        index = Index(tmp_path / "index.sqlite")
        try:
            assert index.query("SELECT count(*) AS n FROM instances WHERE calling_ae = ?", (orthanc.ae_title,))[0]["n"] == 3
        finally:
            index.close()

        asked = run_cli("--config", str(config), "retrieve", study, "--from", "cloud", "--analyse", "ct")
        assert asked.returncode == 0 and "Request 1" in asked.stdout
        listed = run_cli("--config", str(config), "requests", "--json")
        assert [(r["id"], r["state"], r["origin"], r["route"]) for r in json.loads(listed.stdout)] == \
            [(1, "retrieving", "cli", "ct")]
    finally:
        orthanc.stop()
