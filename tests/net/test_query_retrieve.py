"""Query/retrieve as an SCU (net/query_retrieve.py, flow/retrieval.py) against real SCPs:
Orthanc and DCMTK's dcmqrscp for C-FIND, C-MOVE (into the running node) and C-GET (taken in on
the same association), Orthanc's DICOMweb plugin for QIDO-RS and WADO-RS; and what a peer that
refuses or is down makes of a retrieval."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from dicom_node.config import NodeConfig
from dicom_node.errors import PeerError
from dicom_node.flow.retrieval import find, query_peer, retrieve, study_for_accession
from dicom_node.service.node import Node
from dicom_node.storage.audit_chain import read_audit
from dicom_node.tools.orthanc import find_orthanc
from dicom_node.tools.synthetic import write_ct_series
from tests.support.peers import free_port
from tests.support.qr_peers import DICOMWEB_PLUGIN, start_dcmqrscp, start_qr_orthanc

pytestmark = pytest.mark.dcmtk
needs_orthanc = pytest.mark.skipif(find_orthanc() is None, reason="needs orthanc")


def _study(tmp_path: Path, n: int = 6, seed: int = 3) -> tuple[list[Path], str]:
    files = write_ct_series(tmp_path / f"ct{seed}", n, rows=64, columns=64, seed=seed, patient_id=f"QR{seed:03d}")
    for path in files:  # an accession number to find it by
        ds = pydicom.dcmread(path)
        ds.AccessionNumber = f"ACC{seed:04d}"
        ds.save_as(path)
    return files, str(pydicom.dcmread(files[0]).StudyInstanceUID)


def _config(make_config: Callable[..., NodeConfig], port: int, peer: dict) -> NodeConfig:
    return make_config(node={"port": port}, peers=[{"name": "archive", "query": True, "send": True, **peer}])


def _stored(node_or_index: object, study: str) -> dict[str, str]:
    index = getattr(node_or_index, "index", node_or_index)
    rows = index.query("SELECT sop_instance_uid, calling_ae FROM instances WHERE study_uid = ?", (study,))  # type: ignore[attr-defined]
    return {r["sop_instance_uid"]: r["calling_ae"] for r in rows}


@needs_orthanc
@pytest.mark.parametrize("how", ["move", "get"])
def test_orthanc_find_and_retrieve(make_config: Callable[..., NodeConfig], tmp_path: Path, how: str) -> None:
    port = free_port()
    orthanc = start_qr_orthanc(tmp_path / "orthanc", "AI_NODE", port)
    node = Node(_config(make_config, port, {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.port,
                                             "retrieve": how}))
    node.start()
    try:
        files, study = _study(tmp_path)
        for path in files:
            orthanc.upload(path)
        peer = query_peer(node.config, "archive")
        studies = find(node.config, peer, "STUDY", {"PatientID": "QR003"})
        assert [str(s.StudyInstanceUID) for s in studies] == [study]
        assert str(studies[0].AccessionNumber) == "ACC0003" and str(studies[0].NumberOfStudyRelatedInstances) == "6"
        series = find(node.config, peer, "SERIES", {"StudyInstanceUID": study})
        assert len(series) == 1 and str(series[0].Modality) == "CT"
        assert study_for_accession(node.config, peer, "ACC0003") == study
        temporary = set(Path(tempfile.gettempdir()).glob("tmp*.dcm"))
        report = retrieve(node.config, peer, study, node.store, node.index, node.audit)
        assert report.ok and report.completed == 6 and report.failed == 0
        # Nothing left behind: C-GET's streamed sub-operations land in .incoming and are taken from there.
        assert set(Path(tempfile.gettempdir()).glob("tmp*.dcm")) - temporary == set()
        assert [p.name for p in node.store.incoming.iterdir()] == []
        stored = _stored(node, study)
        assert len(stored) == 6 and set(stored.values()) == {orthanc.ae_title}  # marked with their source
        for path in files:
            ds = pydicom.dcmread(path)
            row = node.index.instance(str(ds.SOPInstanceUID))
            assert pydicom.dcmread(row["path"]).PixelData == ds.PixelData
        if how == "get":  # audited as an association that brought a study in
            record = [r for r in read_audit(node.config.audit.path) if r.get("protocol") == "C-GET"][-1]
            assert record["instances_stored"] == 6 and record["studies"][0]["study_uid"] == study
        # Nothing of that study: the peer says so with an empty answer, not an error.
        assert find(node.config, peer, "STUDY", {"PatientID": "NOBODY"}) == []
        with pytest.raises(PeerError, match="no studies with accession"):
            study_for_accession(node.config, peer, "NOPE")
    finally:
        node.stop()
        orthanc.stop()


@needs_orthanc
def test_a_move_to_a_destination_the_peer_does_not_know_ends_with_its_status(make_config: Callable[..., NodeConfig],
                                                                           tmp_path: Path) -> None:
    orthanc = start_qr_orthanc(tmp_path / "orthanc", "SOMEONE_ELSE", 1)
    try:
        files, study = _study(tmp_path, n=2)
        for path in files:
            orthanc.upload(path)
        config = _config(make_config, free_port(), {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.port})
        from dicom_node.storage.index import Index
        from dicom_node.storage.store import InstanceStore
        index = Index(config.index.location)
        store = InstanceStore(config.storage.path)
        try:
            with pytest.raises(PeerError, match=r"answered C-MOVE with status 0x"):
                retrieve(config, query_peer(config, "archive"), study, store, index)
        finally:
            index.close()
    finally:
        orthanc.stop()


def test_a_peer_that_is_down_or_refuses(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    config = _config(make_config, free_port(), {"ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()})
    with pytest.raises(PeerError, match="cannot reach archive"):
        find(config, query_peer(config, "archive"), "STUDY", {"PatientID": "X"})
    config = make_config(peers=[{"name": "archive", "ae_title": "X", "host": "127.0.0.1", "port": 1}])
    with pytest.raises(PeerError, match="does not have query: true"):
        query_peer(config, "archive")


@pytest.mark.parametrize("how", ["move", "get"])
def test_dcmqrscp_find_and_retrieve(make_config: Callable[..., NodeConfig], tmp_path: Path, how: str) -> None:
    port = free_port()
    files, study = _study(tmp_path, n=5, seed=4)
    qr = start_dcmqrscp(tmp_path / "qr", files, "AI_NODE", port)
    node = Node(_config(make_config, port, {"ae_title": qr.ae_title, "host": "127.0.0.1", "port": qr.port, "retrieve": how}))
    node.start()
    try:
        peer = query_peer(node.config, "archive")
        assert [str(s.StudyInstanceUID) for s in find(node.config, peer, "STUDY", {"PatientID": "QR004"})] == [study]
        report = retrieve(node.config, peer, study, node.store, node.index, node.audit)
        assert report.ok and report.completed == 5
        assert len(_stored(node, study)) == 5
    finally:
        node.stop()
        qr.stop()


@pytest.mark.skipif(find_orthanc() is None or not DICOMWEB_PLUGIN.exists(), reason="needs orthanc-dicomweb")
def test_qido_and_wado_from_a_dicomweb_peer(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    orthanc = start_qr_orthanc(tmp_path / "orthanc", "AI_NODE", 1, dicomweb=True)
    try:
        files, study = _study(tmp_path, n=4, seed=5)
        for path in files:
            orthanc.upload(path)
        config = make_config(peers=[{"name": "archive", "query": True, "dicomweb": {"url": f"{orthanc.base_url}/dicom-web"}}])
        from dicom_node.storage.index import Index
        from dicom_node.storage.store import InstanceStore
        index, store = Index(config.index.location), InstanceStore(config.storage.path)
        try:
            peer = query_peer(config, "archive")
            assert [str(s.StudyInstanceUID) for s in find(config, peer, "STUDY", {"PatientID": "QR005"})] == [study]
            assert study_for_accession(config, peer, "ACC0005") == study
            assert len(find(config, peer, "SERIES", {"StudyInstanceUID": study})) == 1
            report = retrieve(config, peer, study, store, index)
            assert report.ok and report.stored == 4
            stored = _stored(index, study)
            assert len(stored) == 4 and set(stored.values()) == {"ARCHIVE"}
            for path in files:
                ds = pydicom.dcmread(path)
                assert pydicom.dcmread(index.instance(str(ds.SOPInstanceUID))["path"]).PixelData == ds.PixelData
            with pytest.raises(PeerError):
                retrieve(config, peer, "1.2.3.4.5.6.7.8.9", store, index)
        finally:
            index.close()
    finally:
        orthanc.stop()
