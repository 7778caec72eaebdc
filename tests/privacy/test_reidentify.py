"""De-identified forwarding and results mapped back (privacy/reidentify.py, routing, sender).

End to end: Orthanc (the PACS) sends a CT study to the node; a route forwards it de-identified to
an "external AI" (a pynetdicom SCP that segments with highdicom and sends the SEG back); the node
maps the SEG to the original patient and study and delivers it to Orthanc. Everything the external
side received is scanned for the original identity.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from dicom_node.config import NodeConfig, parse_config
from dicom_node.flow.outbox import Outbox
from dicom_node.service.node import Node
from dicom_node.tools.synthetic import write_ct_series

from ..conftest import TEST_SCU, config_dict
from ..net.test_storage_scp import send
from ..support import processes
from ..support.external_ai import ExternalAI, add_identity, identity_found, table_violations
from ..support.peers import free_port, start_orthanc, system_binary, wait_for

PROFILE = {"options": ["retain_longitudinal_modified_dates", "clean_descriptors"]}


def key_file(folder: Path) -> Path:
    path = folder / "site.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def originals_of(files: list[Path]) -> set[str]:
    """What must not reach the external side: the original UIDs, names, IDs, dates, places."""
    found: set[str] = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.FrameOfReferenceUID)}
        found |= {str(ds.PatientID), str(ds.PatientBirthDate), str(ds.AccessionNumber), str(ds.StudyDate), "Testpatient",
                  "Gertrud", "St. Example Hospital", "Exampletown", "Radiographer", "Referrer", "CT-ROOM-3"}
    return found


def check_mapped_back(seg: pydicom.Dataset, sent_seg: pydicom.Dataset, files: list[Path]) -> None:
    original = pydicom.dcmread(files[0], stop_before_pixels=True)
    sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert seg.StudyInstanceUID == original.StudyInstanceUID
    assert (seg.PatientID, str(seg.PatientName)) == (original.PatientID, str(original.PatientName))
    assert (seg.PatientBirthDate, seg.AccessionNumber, seg.StudyDate) == (original.PatientBirthDate,
                                                                         original.AccessionNumber, original.StudyDate)
    assert seg.FrameOfReferenceUID == original.FrameOfReferenceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == original.SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == sops
    assert {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for f in seg.PerFrameFunctionalGroupsSequence} <= sops
    assert "PatientIdentityRemoved" not in seg and "DeidentificationMethod" not in seg
    assert seg.SOPInstanceUID == sent_seg.SOPInstanceUID  # the external side's own UIDs stay


def references(ds: pydicom.Dataset) -> set[str]:
    """Every Referenced SOP Instance UID at any depth."""
    found: set[str] = set()
    for element in ds.iterall():
        if element.keyword == "ReferencedSOPInstanceUID":
            found.add(str(element.value))
    return found


@pytest.mark.slow
def test_orthanc_study_goes_out_deidentified_and_its_seg_comes_back_to_the_original_patient(tmp_path: Path) -> None:
    external = ExternalAI()
    orthanc_port = free_port()
    sections = {
        "peers": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port},
                  {"name": "extai", "ae_title": "EXTAI", "host": "127.0.0.1", "port": external.port}],
        "routes": [{"name": "external-ai", "match": {"modality": "CT"},
                    "forward": [{"peer": "extai", "deidentify": "research"}], "destinations": ["sender"]}],
        "deidentification": {"key_file": str(key_file(tmp_path)), "profiles": {"research": PROFILE}},
        "results": {"path": str(tmp_path / "results")},
        "delivery": {"retry_base_seconds": 0.5, "retry_max_seconds": 2, "interval_seconds": 0.2},
        "completion": {"series_stable_seconds": 2, "study_stable_seconds": 3, "sweep_interval_seconds": 0.2},
    }
    node = Node(parse_config(config_dict(tmp_path, **sections), "privacy-e2e"))
    node.start()
    orthanc = start_orthanc(tmp_path / "orthanc", port=orthanc_port, modalities={"ainode": ["AI_NODE", "127.0.0.1", node.port]})
    try:
        files = write_ct_series(tmp_path / "ct", 8, 48, 48, seed=31, patient_id="MRN-4711")
        for path in files:
            add_identity(path)
            orthanc.upload(path)
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        answer = orthanc.call("POST", "/modalities/ainode/store", {"Resources": [orthanc.study_id(study_uid)], "Synchronous": True})
        assert answer["FailedInstancesCount"] == 0, answer

        wait_for(lambda: len(external.received) == len(files), 60, "the de-identified study at the external AI")
        assert identity_found(external.received, originals_of(files)) == []
        assert table_violations(external.received, frozenset(PROFILE["options"])) == []
        first = external.received[0]
        assert first.PatientIdentityRemoved == "YES" and first.PatientID.startswith("PSEUDO-")
        assert first.StudyDescription == "CT abdomen"  # Clean Descriptors: the name went, the rest stayed
        assert not any(e.tag.is_private for d in external.received for e in d)

        sent = external.segment_and_send_back(node.port)
        seg_series = wait_for(lambda: [s for s in orthanc.series_of_study(study_uid) if s["MainDicomTags"].get("Modality") == "SEG"],
                              60, "the mapped-back SEG in Orthanc, in the original study")
        seg = pydicom.dcmread(io.BytesIO(orthanc.instance_file(seg_series[0]["Instances"][0])))
        check_mapped_back(seg, sent, files)
        # Orthanc filed it under the original patient: one patient, one study.
        assert len(orthanc.call("GET", "/patients")) == 1 and len(orthanc.call("GET", "/studies")) == 1
        written = next((tmp_path / "results" / "returned").rglob("*.dcm"))
        result = processes.run([system_binary("dciodvfy"), str(written)], timeout=120)
        assert [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")] == []
    finally:
        node.stop()
        orthanc.stop()
        external.stop()


def test_burned_in_instances_are_held_back_and_only_the_peer_the_study_went_to_can_answer(
        tmp_path: Path, make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node]) -> None:
    external = ExternalAI()
    pacs = ExternalAI("PACS")  # a plain Storage SCP that records
    try:
        config = make_config(
            peers=[{"name": "scu", "ae_title": TEST_SCU, "host": "127.0.0.1", "port": 1},
                   {"name": "extai", "ae_title": "EXTAI", "host": "127.0.0.1", "port": external.port},
                   {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port, "send": False}],
            routes=[{"name": "external-ai", "match": {"modality": ["CT", "OT"]},
                     "forward": [{"peer": "extai", "deidentify": "research"}], "destinations": ["pacs"]}],
            deidentification={"key_file": str(key_file(tmp_path)), "profiles": {"research": PROFILE}},
            results={"path": str(tmp_path / "results")}, delivery={"interval_seconds": 0.2})
        node = start_node(config)
        files = write_ct_series(tmp_path / "ct", 4, 32, 32, seed=32)
        for path in files:
            add_identity(path)
        study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        burned = write_ct_series(tmp_path / "burned", 2, 32, 32, seed=33, study_uid=study_uid)
        for path in burned:
            add_identity(path, {"BurnedInAnnotation": "YES", "Modality": "OT"})
        assert send(node.port, files + burned) == [0] * 6
        outbox = Outbox(node.index)
        wait_for(lambda: len(external.received) == 4 and all(r["routed_version"] == 1 for r in node.index.query(
            "SELECT routed_version FROM series")), 30, "the CT series at the external AI, both series routed")
        assert {d.Modality for d in external.received} == {"CT"}  # the burned-in series was held back
        assert len([d for d in outbox.list() if d["peer"] == "extai"]) == 4

        # The external AI's SEG, sent by someone else (the modality's AE title): stored, not mapped back.
        impostor = external.segment_and_send_back  # the same object, but from another AE title
        external.ae_title = TEST_SCU
        impostor(node.port)
        wait_for(lambda: len(node.index.query("SELECT * FROM series WHERE modality = 'SEG' AND routed_version = 1")) == 1,
                 30, "the impostor's SEG routed")
        assert not [d for d in outbox.list() if d["job_key"].startswith("returned:")]
        assert pacs.received == []

        external.ae_title = "EXTAI"
        sent = external.segment_and_send_back(node.port)
        wait_for(lambda: any(d.SOPInstanceUID == sent.SOPInstanceUID for d in pacs.received), 30, "the SEG at the PACS")
        seg = next(d for d in pacs.received if d.SOPInstanceUID == sent.SOPInstanceUID)
        check_mapped_back(seg, sent, files)
        from dicom_node.storage.audit_chain import read_audit

        # The export to the PACS is audited under the original study, the one the PACS now holds.
        sent_records = wait_for(lambda: [r for r in read_audit(tmp_path / "audit.jsonl") if r["event"] == "result_sent"],
                                10, "the delivery's audit record")
        assert {r["study_uid"] for r in sent_records} == {study_uid}
    finally:
        external.stop()
        pacs.stop()


def test_results_go_deidentified_to_a_research_destination_and_identified_to_the_pacs(
        tmp_path: Path, make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node]) -> None:
    """A route's ``destinations`` may name a profile too: the same SEG and SR, identified for the
    PACS, de-identified (with consistent pseudonyms: the SR still references the SEG) for research."""
    research, pacs = ExternalAI("RESEARCH"), ExternalAI("PACS")
    try:
        config = make_config(
            peers=[{"name": "scu", "ae_title": TEST_SCU, "host": "127.0.0.1", "port": 1},
                   {"name": "research", "ae_title": "RESEARCH", "host": "127.0.0.1", "port": research.port, "send": False},
                   {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port, "send": False}],
            routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline",
                     "destinations": ["pacs", {"peer": "research", "deidentify": "research"}]}],
            pipelines={"baseline": {"kind": "classical"}},
            deidentification={"key_file": str(key_file(tmp_path)), "profiles": {"research": PROFILE}},
            results={"path": str(tmp_path / "results")}, jobs={"workers": 1, "poll_seconds": 0.2},
            delivery={"interval_seconds": 0.2})
        node = start_node(config)
        from ai.phantom import make_phantom
        from dicom_node.tools.synthetic import write_volume_series

        phantom = make_phantom(5, shape=(24, 64, 64), spacing=(2.5, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
        files = write_volume_series(phantom.volume, tmp_path / "ct", seed=5)
        assert send(node.port, files) == [0] * len(files)
        wait_for(lambda: len(pacs.received) == 2 and len(research.received) == 2, 120, "SEG and SR at both destinations")
        original = pydicom.dcmread(files[0], stop_before_pixels=True)
        by_modality = {d.Modality: d for d in research.received}
        assert all(d.PatientIdentityRemoved == "YES" and d.PatientID != original.PatientID for d in research.received)
        assert all(d.StudyInstanceUID != original.StudyInstanceUID for d in research.received)
        assert all(d.PatientID == original.PatientID for d in pacs.received)
        # Consistent pseudonyms: the de-identified SR references the de-identified SEG, as the
        # identified SR references the identified SEG.
        identified = {d.Modality: d for d in pacs.received}
        assert str(identified["SEG"].SOPInstanceUID) in references(identified["SR"])
        assert str(by_modality["SEG"].SOPInstanceUID) in references(by_modality["SR"])
        assert by_modality["SEG"].SOPInstanceUID != identified["SEG"].SOPInstanceUID
    finally:
        research.stop()
        pacs.stop()


def test_a_study_sent_to_two_peers_can_be_answered_by_each_and_by_nobody_else(
        open_index: Callable[[str], object], make_config: Callable[..., NodeConfig]) -> None:
    """One site key gives every peer the same pseudonyms: the map keeps a row per peer (on both
    index backends)."""
    from dicom_node.privacy import pseudonym_map
    from dicom_node.privacy.reidentify import returning

    config = make_config(peers=[{"name": "a", "ae_title": "AI_A", "host": "127.0.0.1", "port": 104},
                                {"name": "b", "ae_title": "AI_B", "host": "127.0.0.1", "port": 105}])
    index = open_index("index.sqlite")
    with index.transaction() as db:  # type: ignore[attr-defined]
        for peer in ("a", "b"):
            pseudonym_map.record(db, [("2.25.1", "1.2.3", "uid"), ("2.25.2", "1.2.3.4", "uid")], "1.2.3", "r", peer, "p", 0)
        back = returning(db, "2.25.1", "AI_B", config.peers)
        assert back is not None and (back.peer, back.original_study_uid) == ("b", "1.2.3")
        assert returning(db, "2.25.1", "AI_A", config.peers).peer == "a"
        assert returning(db, "2.25.1", "OTHER", config.peers) is None
        assert returning(db, "2.25.2", "AI_A", config.peers) is None  # a series pseudonym is not a study
        assert pseudonym_map.originals(db, ["2.25.1", "2.25.2", "9.9"]) == {"2.25.1": "1.2.3", "2.25.2": "1.2.3.4"}
