"""The listener against real peers on loopback: pynetdicom SCUs and DCMTK's storescu/echoscu."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicom_node.config import NodeConfig
from dicom_node.service.node import Node
from dicom_node.storage.audit_chain import read_audit
from dicom_node.storage.header import read_header
from dicom_node.storage.index import Outcome, Receipt
from dicom_node.tools.synthetic import write_ct_series

from ..conftest import TEST_SCU, Dcmtk, dataset_bytes, dcmtk_reference_datasets, pydicom_values_unchecked, with_uids
from ..support import processes


def _testfile(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path, f"{name} missing: install the test extras (pydicom-data)"
    return Path(path)


def send(port: int, files: list[Path], calling: str = TEST_SCU, called: str = "AI_NODE") -> list[int]:
    """C-STORE each file unchanged (chunked send: no decode) over one association."""
    ae = AE(ae_title=calling)
    for path in files:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        assert assoc.is_established, "association was not accepted"
        statuses = [int(assoc.send_c_store(path).Status) for path in files]
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return statuses


def stored_path(node: Node, sop_uid: str) -> Path:
    row = node.index.instance(sop_uid)
    assert row is not None, f"{sop_uid} is not in the index"
    return Path(row["path"])


def assert_stored_unchanged(node: Node, sources: list[Path]) -> None:
    for source in sources:
        uid = str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored_path(node, uid)) == dataset_bytes(source), f"{source.name} changed on the way"


def test_echo(node: Node) -> None:
    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_pynetdicom_series_arrives_byte_for_byte_and_indexed(node: Node, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "series", 12, 64, 64)
    assert send(node.port, files) == [0] * 12
    assert_stored_unchanged(node, files)
    [study] = node.index.studies()
    [series] = study["series"]
    assert (series["instance_count"], series["modality"], series["calling_ae"]) == (12, "CT", TEST_SCU)
    assert list(node.store.incoming.iterdir()) == []


COMPRESSED_AND_ENHANCED = [
    "eCT_Supplemental.dcm",  # Enhanced CT, 2 frames
    "emri_small_jpeg_ls_lossless.dcm",  # Enhanced MR, JPEG-LS
    "JPEG-LL.dcm",  # JPEG lossless SV1
    "MR2_J2KR.dcm",  # JPEG 2000 lossless
    "emri_small_RLE.dcm",  # RLE
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, Secondary Capture
    "JPEG2000.dcm",  # JPEG 2000
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "JPEG-lossy.dcm",  # JPEG extended (process 2 and 4)
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
]


@pytest.mark.parametrize("name", COMPRESSED_AND_ENHANCED)
def test_compressed_and_enhanced_instances_stored_unchanged(node: Node, name: str) -> None:
    # One file per node: several of these test files share a SOP Instance UID.
    source = _testfile(name)
    assert send(node.port, [source]) == [0]
    assert_stored_unchanged(node, [source])
    meta = dcmread(source, stop_before_pixels=True)
    row = node.index.instance(str(meta.SOPInstanceUID))
    assert row is not None
    assert row["transfer_syntax_uid"] == str(meta.file_meta.TransferSyntaxUID)


def test_every_compressed_syntax_is_accepted_in_negotiation(node: Node) -> None:
    """Syntaxes no offline test file carries (HTJ2K, JPEG XL, ...) are still accepted as sent."""
    from dicom_node.net.contexts import ACCEPTED_TRANSFER_SYNTAXES

    wanted = ["1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.4.50",
              "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
              "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
              "1.2.840.10008.1.2.1.99"]
    assert set(wanted) <= set(ACCEPTED_TRANSFER_SYNTAXES)
    ae = AE(ae_title=TEST_SCU)
    for ts in wanted:
        ae.add_requested_context(CTImageStorage, ts)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
    assert assoc.is_established
    assert sorted(cx.transfer_syntax[0] for cx in assoc.accepted_contexts) == sorted(wanted)
    assoc.release()


# storescu proposes a compressed syntax only when told; -R: only the contexts the files need.
DCMTK_PROPOSALS = {
    "CT_small.dcm": [],
    "eCT_Supplemental.dcm": [],
    "JPEG-LL.dcm": ["-xs"],
    "MR2_J2KR.dcm": ["-xv"],
    "emri_small_jpeg_ls_lossless.dcm": ["-xt"],
    "emri_small_RLE.dcm": ["-xr"],
    "image_dfl.dcm": ["-xd"],
}


@pytest.mark.parametrize("name", sorted(DCMTK_PROPOSALS))
def test_dcmtk_storescu_each_file_in_its_own_syntax(node: Node, dcmtk: Dcmtk, tmp_path: Path, name: str) -> None:
    source = _testfile(name)
    args = ["-R", *DCMTK_PROPOSALS[name], "-aet", "STORESCU"]
    result = processes.run([dcmtk.storescu, *args, "-aec", "AI_NODE", "127.0.0.1", str(node.port), str(source)],
                            env=dcmtk.env(), timeout=60)
    print(f"ran {dcmtk.storescu}: rc={result.returncode}")
    assert result.returncode == 0, result.stderr
    reference = dcmtk_reference_datasets(dcmtk, tmp_path / "reference", args, [source])
    [(uid, sent)] = reference.items()
    assert dataset_bytes(stored_path(node, uid)) == sent
    assert stored_path(node, uid).read_bytes().startswith(b"\x00" * 128 + b"DICM")


def test_dcmtk_storescu_folder_and_echoscu(node: Node, dcmtk: Dcmtk, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "series", 30, 64, 64, seed=3)
    result = processes.run(
        [dcmtk.storescu, "+sd", "-aet", "STORESCU", "-aec", "AI_NODE", "127.0.0.1", str(node.port), str(tmp_path / "series")],
        env=dcmtk.env(), timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert_stored_unchanged(node, files)
    echo = processes.run([dcmtk.echoscu, "-aet", "ECHOSCU", "-aec", "AI_NODE", "127.0.0.1", str(node.port)],
                          env=dcmtk.env(), timeout=30)
    print(f"ran {dcmtk.echoscu}: rc={echo.returncode}")
    assert echo.returncode == 0, echo.stderr


def test_unknown_caller_rejected_known_accepted_and_audited(node: Node, dcmtk: Dcmtk, tmp_path: Path) -> None:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
    assert assoc.is_rejected
    assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.result_source, assoc.acceptor.primitive.diagnostic) == (1, 1, 3)

    refused = processes.run([dcmtk.echoscu, "-aet", "NOBODY", "-aec", "AI_NODE", "127.0.0.1", str(node.port)],
                             env=dcmtk.env(), timeout=30)
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr

    files = write_ct_series(tmp_path / "s", 3, 32, 32)
    assert send(node.port, files) == [0, 0, 0]
    node.stop()  # flushes and closes the audit log
    records = [r for r in read_audit(node.config.audit.path) if r["event"] == "association"]
    rejected = [r for r in records if r["outcome"] == "rejected"]
    assert {r["calling_ae"] for r in rejected} == {"INTRUDER", "NOBODY"}
    assert all(r["reason"] == "calling AE title not recognised" and r["address"] == "127.0.0.1" for r in rejected)
    [accepted] = [r for r in records if r["outcome"] == "released"]
    assert (accepted["calling_ae"], accepted["instances_stored"], accepted["instances_failed"]) == (TEST_SCU, 3, 0)


def test_verify_host_rejects_known_title_from_elsewhere(make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node]) -> None:
    node = start_node(make_config(peers=[
        {"name": "far", "ae_title": "FAR_AWAY", "host": "10.9.8.7", "port": 104, "verify_host": True},
        {"name": "near", "ae_title": "NEAR", "host": "127.0.0.1", "port": 104, "verify_host": True},
    ]))
    for title, accepted in (("FAR_AWAY", False), ("NEAR", True)):
        ae = AE(ae_title=title)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
        assert assoc.is_established is accepted
        if accepted:
            assoc.release()


def test_several_called_titles_on_one_port_each_recorded_and_others_refused(
        make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node], tmp_path: Path) -> None:
    node = start_node(make_config(node={"ae_titles": ["AI_CHEST", "AI_NEURO"], "require_called_ae_title": True}))
    chest = write_ct_series(tmp_path / "chest", 2, 16, 16)
    neuro = write_ct_series(tmp_path / "neuro", 1, 16, 16, seed=1)
    assert send(node.port, chest, called="AI_CHEST") == [0, 0]
    assert send(node.port, neuro, called="AI_NEURO") == [0]
    called = {r["called_ae"] for r in node.index.query("SELECT called_ae FROM instances WHERE series_uid = ?",
                                                        (str(dcmread(chest[0]).SeriesInstanceUID),))}
    assert called == {"AI_CHEST"}
    assert {r["called_ae"] for r in node.index.query("SELECT called_ae FROM instances")} == {"AI_CHEST", "AI_NEURO"}
    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_OTHER")
    assert assoc.is_rejected
    assert (assoc.acceptor.primitive.result_source, assoc.acceptor.primitive.diagnostic) == (1, 7)
    node.stop()
    [rejected] = [r for r in read_audit(node.config.audit.path) if r["event"] == "association" and r["outcome"] == "rejected"]
    assert (rejected["reason"], rejected["called_ae"]) == ("called AE title 'AI_OTHER' not recognised", "AI_OTHER")


def test_opt_out_accepts_unknown_callers(make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node]) -> None:
    node = start_node(make_config(node={"reject_unknown_callers": False}, peers=[]))
    ae = AE(ae_title="ANYONE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
    assert assoc.is_established
    assoc.release()


def test_disk_watermark_refuses_with_a700(make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node], tmp_path: Path) -> None:
    node = start_node(make_config(storage={"min_free_mb": 2**40}))
    files = write_ct_series(tmp_path / "s", 2, 32, 32)
    assert send(node.port, files) == [0xA700, 0xA700]
    assert node.index.studies() == []
    assert list(node.store.iter_files()) == []
    assert list(node.store.incoming.iterdir()) == []


def test_malformed_dataset_refused_with_c210_and_node_keeps_serving(node: Node, tmp_path: Path) -> None:
    [good] = write_ct_series(tmp_path / "s", 1, 32, 32)
    ds = dcmread(good)
    del ds.StudyInstanceUID
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.999"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)

    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
    status = assoc.send_c_store(dcmread(bad))
    assert status.Status == 0xC210
    assert "StudyInstanceUID" in status.ErrorComment
    assert assoc.send_c_store(dcmread(good)).Status == 0
    assoc.release()
    assert len(list(node.store.iter_files())) == 1


def test_resent_instance_is_idempotent_and_recorded(node: Node, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 3, 32, 32)
    assert send(node.port, files) == [0, 0, 0]
    assert send(node.port, files[:1]) == [0]
    uid = str(dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    row = node.index.instance(uid)
    assert row is not None and row["receive_count"] == 2
    assert node.index.studies()[0]["series"][0]["instance_count"] == 3
    assert [r["outcome"] for r in node.index.query("SELECT outcome FROM receipts")] == ["duplicate"]
    assert len(list(node.store.iter_files())) == 3


def test_concurrent_associations(node: Node, tmp_path: Path) -> None:
    series = [write_ct_series(tmp_path / f"s{i}", 25, 32, 32, seed=100 + i) for i in range(4)]
    results: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, send(node.port, series[i]))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(results[i] == [0] * 25 for i in range(4))
    assert len(node.index.studies()) == 4
    for files in series:
        assert_stored_unchanged(node, files)


def test_large_instance_streams_with_bounded_memory(node: Node, dcmtk: Dcmtk, tmp_path: Path) -> None:
    """A 48 MB instance from storescu: the node's Python heap grows far less than the instance."""
    [big] = write_ct_series(tmp_path / "big", 1, 4096, 6144)  # 4096 x 6144 x 2 bytes = 48 MiB
    size = big.stat().st_size
    tracemalloc.start()
    try:
        result = processes.run(
            [dcmtk.storescu, "-aet", "STORESCU", "-aec", "AI_NODE", "127.0.0.1", str(node.port), str(big)],
            env=dcmtk.env(), timeout=120,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.returncode == 0, result.stderr
    assert peak < size / 4, f"peak Python allocation {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB instance"
    assert_stored_unchanged(node, [big])


def test_large_instance_from_pynetdicom_streams_with_bounded_memory(node: Node, tmp_path: Path) -> None:
    """A pynetdicom sender honours our 1 MiB maximum PDU, so no PDU holds the whole instance."""
    [big] = write_ct_series(tmp_path / "big", 1, 4096, 6144)
    size = big.stat().st_size
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from tests.net.test_storage_scp import send; "
        "assert send(int(sys.argv[2]), [Path(sys.argv[3])]) == [0]"
    )
    tracemalloc.start()  # the sender runs in its own process: only the node's allocations count
    try:
        processes.run([sys.executable, "-c", script, str(Path(__file__).parents[2]), str(node.port), str(big)], check=True, timeout=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 4, f"peak Python allocation {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB instance"
    assert_stored_unchanged(node, [big])


def test_vanished_peer_is_audited_as_aborted_and_node_keeps_serving(node: Node, tmp_path: Path) -> None:
    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
    assert assoc.is_established
    assoc.dul.socket.socket.close()  # the peer disappears without A-RELEASE or A-ABORT
    assoc.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        lines = [r for r in read_audit(node.config.audit.path) if r["event"] == "association" and r.get("calling_ae") == TEST_SCU]
        if lines:
            break
        time.sleep(0.1)
    assert [r["outcome"] for r in lines] == ["aborted"]
    assert send(node.port, write_ct_series(tmp_path / "s", 1, 16, 16)) == [0]


def test_query_identifiers_never_reach_the_log(node: Node) -> None:
    from pynetdicom import _config as pynetdicom_config

    assert pynetdicom_config.LOG_REQUEST_IDENTIFIERS is False and pynetdicom_config.LOG_RESPONSE_IDENTIFIERS is False


def test_an_association_audit_record_names_its_studies_and_patient_ids(node: Node, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 2, 16, 16)
    assert send(node.port, files) == [0, 0]
    node.stop()
    [record] = [r for r in read_audit(node.config.audit.path) if r["event"] == "association"]
    header = dcmread(files[0], stop_before_pixels=True)
    assert record["studies"] == [{"study_uid": header.StudyInstanceUID, "patient_id": header.PatientID,
                                  "sop_classes": {header.SOPClassUID: 2}}]
    assert record["dicom"]["EventIdentification"]["EventID"]["originalText"] == "DICOM Instances Transferred"


# Pairs of UIDs that differ only in what the old file naming ("keep digits and dots") dropped:
# the second of each pair named the same file as the first and overwrote it.
_COLLIDING = [
    ("SOPInstanceUID", "1.2.826.0.1.3680043.8.498.77", "1.2.826.0.1.3680043.8.498.77a"),
    ("SOPInstanceUID", "1.2.826.0.1.3680043.8.498.7.7", "1.2.826.0.1.3680043.8.498.7/.7"),
    ("SOPInstanceUID", "1.2.826.0.1.3680043.8.498.77", "1.2.826.0.1.3680043.8.498.7 7"),
    ("SOPInstanceUID", "1.2.826.0.1.3680043.8.498.77", ".1.2.826.0.1.3680043.8.498.77"),
    ("SeriesInstanceUID", "1.2.826.0.1.3680043.8.498.88", "1.2.826.0.1.3680043.8.498.88-"),
    ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.99", "../1.2.826.0.1.3680043.8.498.99"),
]


@pytest.mark.parametrize(("keyword", "first", "second"), _COLLIDING)
def test_another_patients_instance_never_overwrites_an_acknowledged_one(node: Node, tmp_path: Path, keyword: str,
                                                                        first: str, second: str) -> None:
    """Two different UIDs that once shared a path: the valid one is stored, the other refused with
    0xC210 and the reason, and every acknowledged instance reads back byte for byte."""
    [source] = write_ct_series(tmp_path / "s", 1, 32, 32)
    original = with_uids(source, tmp_path / "a.dcm", **{keyword: first})
    other = with_uids(source, tmp_path / "b.dcm", PatientID="ANOTHER-PATIENT", PatientName="Other^Patient",
                      **{keyword: second})
    assert send(node.port, [original]) == [0]
    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
    assert assoc.is_established
    status = _send_file_raw(assoc, other)
    assoc.release()
    assert status.Status == 0xC210
    assert keyword in status.ErrorComment and "not a UID" in status.ErrorComment
    assert_stored_unchanged(node, [original])
    assert len(list(node.store.iter_files())) == 1
    assert [r["sop_instance_uid"] for r in node.index.query("SELECT sop_instance_uid FROM instances")] == [
        str(dcmread(original, stop_before_pixels=True).SOPInstanceUID)]


def _send_file_raw(assoc: object, path: Path) -> Any:
    """C-STORE a file's bytes as they are (no decode, no value checks on the way)."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with pydicom_values_unchecked():
            return assoc.send_c_store(path)  # type: ignore[attr-defined]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def test_a_path_owned_by_another_instance_in_the_index_is_never_replaced(node: Node, tmp_path: Path) -> None:
    """An index from before UIDs named files by themselves may hold an instance whose file sits where
    a valid UID's file now goes: the newcomer is refused, the old file and row stay."""
    [source] = write_ct_series(tmp_path / "s", 1, 32, 32)
    header = read_header(source)
    final = node.store.path_for(header)
    final.parent.mkdir(parents=True)
    legacy = with_uids(source, final, SOPInstanceUID=header.sop_instance_uid + "x", PatientID="LEGACY")
    before = legacy.read_bytes()
    node.index.record_instance(dataclasses.replace(header, sop_instance_uid=header.sop_instance_uid + "x", patient_id="LEGACY"),
                               final, len(before), Receipt("OLD", "AI_NODE", "127.0.0.1", 0.0), Outcome.NEW)
    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
    status = _send_file_raw(assoc, source)
    assoc.release()
    assert status.Status == 0xC210
    assert "path of another instance" in status.ErrorComment
    assert final.read_bytes() == before
    assert node.index.instance(header.sop_instance_uid) is None
