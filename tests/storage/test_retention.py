"""Retention: studies past the age and the oldest under the watermark are removed (files, rows,
an audit record each); a study with any unfinished work (receiving, not routed, a job queued or
running, a delivery pending) is never removed; results go when their job is long finished and
nothing of it is pending."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError
from dicom_node.flow.jobs import JobQueue
from dicom_node.flow.outbox import Candidate, Outbox
from dicom_node.flow.routing import route_completed
from dicom_node.storage.audit import AuditLog
from dicom_node.storage.audit_chain import read_audit
from dicom_node.storage.header import read_header
from dicom_node.storage.index import Index, Outcome, Receipt
from dicom_node.storage.retention import DAY, Retention
from dicom_node.tools.synthetic import write_ct_series

PEERS = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}]


def receive(index: Index, folder: Path, seed: int, at: float) -> list[Path]:
    files = write_ct_series(folder, 2, 16, 16, seed=seed)
    for path in files:
        index.record_instance(read_header(path), path, path.stat().st_size, Receipt("PACS", "AI_NODE", "127.0.0.1", at),
                              Outcome.NEW)
    return files


def study_of(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def setup(tmp_path: Path, make_config: Callable[..., NodeConfig],
          index_location: Path | str) -> Iterator[Callable[..., tuple[NodeConfig, Index, Retention]]]:
    """Retention on each index backend (SQLite, PostgreSQL)."""
    opened: list[tuple[Index, AuditLog]] = []
    where = {"url": index_location} if isinstance(index_location, str) else {"path": str(index_location)}

    def make(routes: list | None = None, **retention: object) -> tuple[NodeConfig, Index, Retention]:
        config = make_config(peers=PEERS, routes=routes or [], pipelines={"p": {"kind": "classical"}},
                             retention={"enabled": True, **retention}, results={"path": str(tmp_path / "results")},
                             index=where)
        index, audit = Index(config.index.location), AuditLog(config.audit.path)
        opened.append((index, audit))
        return config, index, Retention(config, index, audit, clock=lambda: 10 * DAY)

    yield make
    for index, audit in opened:
        audit.close()
        index.close()


def test_old_settled_studies_go_files_rows_and_an_audit_line(setup: Callable, tmp_path: Path) -> None:
    config, index, retention = setup(max_age_days=3)
    old = receive(index, tmp_path / "old", 1, at=1 * DAY)
    new = receive(index, tmp_path / "new", 2, at=9 * DAY)
    old_uid, new_uid = study_of(old), study_of(new)
    index.complete_stable(10 * DAY, 10, 30)
    route_completed(index, config, now=10 * DAY)
    [removal] = retention.run_once()
    assert (removal.study_uid, removal.instances, removal.reason) == (old_uid, 2, "older than 3 days")
    assert not any(p.exists() for p in old) and all(p.exists() for p in new)
    assert [s["study_uid"] for s in index.studies()] == [new_uid]
    assert index.query("SELECT count(*) AS n FROM instances")[0]["n"] == 2
    retention.audit.close()  # flushed
    [record] = [r for r in read_audit(config.audit.path) if r["event"] == "retention_removed"]
    assert (record["study_uid"], record["instances"], record["bytes"]) == (old_uid, 2, sum(p.stat().st_size for p in new))


def test_unfinished_work_is_never_removed(setup: Callable, tmp_path: Path) -> None:
    routes = [{"name": "ct", "match": {"modality": "CT"}, "pipeline": "p", "destinations": ["pacs"]},
              {"name": "archive", "match": {"modality": "CT"}, "forward": ["pacs"]}]
    config, index, retention = setup(routes=routes, max_age_days=1)
    receiving = receive(index, tmp_path / "receiving", 3, at=1 * DAY)  # not complete: its quiet time not passed
    uid = study_of(receiving)
    index.complete_stable(1 * DAY, 10, 30)
    assert retention.run_once() == []
    index.complete_stable(2 * DAY, 10, 30)  # complete, not routed yet
    assert retention.run_once() == []
    route_completed(index, config, now=2 * DAY)  # a job queued and forwards pending
    assert retention.run_once() == []
    queue, outbox = JobQueue(index), Outbox(index)
    job = queue.claim("w", 2 * DAY, 60)
    assert job is not None and retention.run_once() == []  # running
    with index.transaction() as db:
        JobQueue.mark_done(db, job.id, "w", 2 * DAY, "p")
        Outbox.add(db, job.id, job.key, "seg", "pacs", [Candidate("binary", str(tmp_path / "seg.dcm"), "1.2", "1.2.840.10008.1.2.1", "9")], 2 * DAY)
    assert retention.run_once() == []  # the job is done, its SEG and the forwards still pending
    for delivery in outbox.list():
        outbox.delivered(delivery["id"], "original", 3 * DAY)
    [removal] = retention.run_once()
    assert removal.study_uid == uid and not any(p.exists() for p in receiving)


def test_under_the_watermark_the_oldest_go_first_until_above_it(setup: Callable, tmp_path: Path,
                                                                make_config: Callable[..., NodeConfig]) -> None:
    config, index, retention = setup(disk_free_watermark_mb=100)
    studies = [receive(index, tmp_path / f"s{n}", 10 + n, at=(1 + n) * DAY) for n in range(3)]
    uids = [study_of(files) for files in studies]
    index.complete_stable(10 * DAY, 10, 30)
    route_completed(index, config, now=10 * DAY)
    free = iter([50 * 2**20, 80 * 2**20, 120 * 2**20])  # free space after each removal
    retention.free_bytes = lambda: next(free)
    removed = retention.run_once()
    assert [r.study_uid for r in removed] == uids[:2]
    assert all(p.exists() for p in studies[2])
    assert "under the watermark 100 MB" in removed[0].reason
    with pytest.raises(ConfigError, match="retention is enabled but sets no limit"):
        make_config(retention={"enabled": True})


def test_a_file_received_again_meanwhile_stays(setup: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, index, retention = setup(max_age_days=1)
    files = receive(index, tmp_path / "s", 20, at=1 * DAY)
    index.complete_stable(10 * DAY, 10, 30)
    route_completed(index, config, now=10 * DAY)
    original = index.transaction

    def transaction_then_a_resend():  # the same instance arrives right after the rows are deleted
        from contextlib import contextmanager

        @contextmanager
        def wrapped():
            with original() as db:
                yield db
            copy = files[0].with_name("resent.tmp")
            copy.write_bytes(files[0].read_bytes())
            copy.replace(files[0])  # a new file (inode) at the same path, as the store's rename makes
        return wrapped()

    monkeypatch.setattr(index, "transaction", transaction_then_a_resend)
    retention.run_once()
    assert files[0].exists() and not files[1].exists()


def test_results_go_when_their_job_is_long_finished_and_nothing_is_pending(setup: Callable, tmp_path: Path) -> None:
    config, index, retention = setup(results_max_age_days=2)
    queue, outbox = JobQueue(index), Outbox(index)
    folders = []
    for n, state in enumerate(("delivered", "pending")):
        folder = tmp_path / "results" / f"job{n}"
        folder.mkdir(parents=True)
        (folder / "seg.dcm").write_bytes(b"x" * 100)
        folders.append(folder)
        with index.transaction() as db:
            db.execute("INSERT INTO jobs(key, route, pipeline, series_uid, study_uid, series_version, destinations, priority, "
                       "state, max_attempts, not_before, created_at, updated_at, finished_at) VALUES(?, 'r', 'p', 's', 't', 1, "
                       "'[]', 0, 'done', 3, 0, 0, 0, ?)", (f"job{n}", 1 * DAY))
            job_id = db.execute("SELECT id FROM jobs WHERE key = ?", (f"job{n}",)).fetchone()["id"]
            Outbox.add(db, job_id, f"job{n}", "seg", "pacs", [Candidate("binary", str(folder / "seg.dcm"), "1", "2", "3")], DAY)
        if state == "delivered":
            outbox.delivered(outbox.list()[0]["id"], "binary", DAY)
    retention.run_once()
    assert not folders[0].exists() and folders[1].exists()
    assert json.loads(outbox.list()[0]["candidates"])  # the rows stay: the history of what was sent
    assert queue.counts() == {"done": 2}
