from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dicom_node.storage.header import InstanceHeader
from dicom_node.storage.index import Index, Outcome, Receipt


def _header(sop: str, series: str = "1.2.3.1", study: str = "1.2.3") -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=sop, study_instance_uid=study,
        series_instance_uid=series, transfer_syntax_uid="1.2.840.10008.1.2.1", patient_id="P1",
        patient_name="Doe^Jane", modality="CT", body_part_examined="CHEST", series_description="Axial",
        series_number=2, instance_number=1,
    )


def _receipt(at: float) -> Receipt:
    return Receipt(calling_ae="MODALITY", called_ae="AI_NODE", peer_address="127.0.0.1", received_at=at)


@pytest.fixture
def index(index_location: Path | str) -> Index:
    idx = Index(index_location)
    yield idx
    idx.close()


def test_records_routing_attributes(index: Index) -> None:
    index.record_instance(_header("1.1"), Path("/s/1.1.dcm"), 1234, _receipt(100.0), Outcome.NEW)
    row = index.instance("1.1")
    assert row is not None
    assert (row["calling_ae"], row["called_ae"], row["size"], row["transfer_syntax_uid"]) == ("MODALITY", "AI_NODE", 1234, "1.2.840.10008.1.2.1")
    [study] = index.studies()
    assert (study["patient_id"], study["patient_name"], study["state"]) == ("P1", "Doe^Jane", "receiving")
    [series] = study["series"]
    assert (series["modality"], series["body_part_examined"], series["series_description"], series["instance_count"]) == ("CT", "CHEST", "Axial", 1)


def test_wal_mode_and_one_writer_at_a_time(index: Index, index_location: Path | str) -> None:
    """SQLite in WAL mode; on both, a write transaction waits for another process's (PostgreSQL:
    the advisory lock that gives the SQLite statements their meaning there)."""
    import threading
    import time

    if index.dialect == "sqlite":
        assert index.query("PRAGMA journal_mode")[0][0] == "wal"
    other = Index(index_location)
    entered = threading.Event()

    def hold() -> None:
        with other.transaction() as db:
            db.execute("INSERT INTO meta(key, value) VALUES('holder', 'x')")
            entered.set()
            time.sleep(0.5)

    thread = threading.Thread(target=hold)
    thread.start()
    entered.wait(10)
    started = time.monotonic()
    index.set_meta("waiter", "y")
    waited = time.monotonic() - started
    thread.join()
    other.close()
    assert waited >= 0.3, f"the second writer went ahead after {waited:.2f} s"
    assert (index.get_meta("holder"), index.get_meta("waiter")) == ("x", "y")


def test_duplicates_are_recorded_not_counted(index: Index) -> None:
    index.record_instance(_header("1.1"), Path("/s/1.1.dcm"), 10, _receipt(100.0), Outcome.NEW)
    index.record_instance(_header("1.1"), Path("/s/1.1.dcm"), 10, _receipt(101.0), Outcome.DUPLICATE)
    index.record_instance(_header("1.1"), Path("/s/1.1.dcm"), 12, _receipt(102.0), Outcome.REPLACED)
    row = index.instance("1.1")
    assert row is not None and row["receive_count"] == 3 and row["size"] == 12
    assert [r["outcome"] for r in index.query("SELECT outcome FROM receipts ORDER BY id")] == ["duplicate", "replaced"]
    assert index.studies()[0]["series"][0]["instance_count"] == 1


def test_completion_and_reopening(index: Index) -> None:
    index.record_instance(_header("1.1"), Path("/a"), 1, _receipt(100.0), Outcome.NEW)
    index.record_instance(_header("1.2"), Path("/b"), 1, _receipt(105.0), Outcome.NEW)
    assert index.complete_stable(now=109.0, series_stable_seconds=5, study_stable_seconds=10) == []
    done = index.complete_stable(now=110.0, series_stable_seconds=5, study_stable_seconds=10)
    assert [(d.level, d.uid, d.version) for d in done] == [("series", "1.2.3.1", 1)]
    done = index.complete_stable(now=115.0, series_stable_seconds=5, study_stable_seconds=10)
    assert [(d.level, d.uid, d.version) for d in done] == [("study", "1.2.3", 1)]
    # A late instance re-opens series and study as version 2.
    index.record_instance(_header("1.3"), Path("/c"), 1, _receipt(200.0), Outcome.NEW)
    study = index.studies()[0]
    assert (study["state"], study["version"]) == ("receiving", 2)
    assert (study["series"][0]["state"], study["series"][0]["version"]) == ("receiving", 2)
    assert index.instance("1.3")["series_version"] == 2  # type: ignore[index]
    done = index.complete_stable(now=300.0, series_stable_seconds=5, study_stable_seconds=10)
    assert {(d.level, d.version) for d in done} == {("series", 2), ("study", 2)}


def test_identical_duplicate_does_not_reopen(index: Index) -> None:
    index.record_instance(_header("1.1"), Path("/a"), 1, _receipt(100.0), Outcome.NEW)
    index.complete_stable(now=200.0, series_stable_seconds=5, study_stable_seconds=10)
    index.record_instance(_header("1.1"), Path("/a"), 1, _receipt(300.0), Outcome.DUPLICATE)
    assert index.studies()[0]["state"] == "complete"


def test_study_waits_for_all_its_series(index: Index) -> None:
    index.record_instance(_header("1.1", series="9.1"), Path("/a"), 1, _receipt(100.0), Outcome.NEW)
    index.record_instance(_header("1.2", series="9.2"), Path("/b"), 1, _receipt(100.0), Outcome.NEW)
    index.record_instance(dataclasses.replace(_header("1.3", series="9.2")), Path("/c"), 1, _receipt(150.0), Outcome.NEW)
    done = index.complete_stable(now=152.0, series_stable_seconds=5, study_stable_seconds=1)
    assert [(d.level, d.uid) for d in done] == [("series", "9.1")]


def test_meta_round_trip(index: Index) -> None:
    assert index.get_meta("k") is None
    index.set_meta("k", "1")
    index.set_meta("k", "2")
    assert index.get_meta("k") == "2"
