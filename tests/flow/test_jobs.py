"""The job queue: claims, leases, heartbeats, retries with backoff, dead letters, priorities."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.errors import LeaseLost
from dicom_node.flow.jobs import JobQueue, JobState, NewJob, job_key
from dicom_node.storage.index import Index


def new_job(series: str, priority: str = "routine", version: int = 1) -> NewJob:
    return NewJob(job_key("ct", series, version), "ct", "baseline", series, "1.2.3", version, "PACS", ("pacs",), priority)


@pytest.fixture
def queue(index_location: Path | str) -> Iterator[JobQueue]:
    jobs = JobQueue(Index(index_location), max_attempts=3, retry_base_seconds=10)
    yield jobs
    jobs.index.close()


def add(queue: JobQueue, job: NewJob, now: float = 0.0) -> bool:
    with queue.index.transaction() as db:
        return JobQueue.add(db, job, now, max_attempts=3)


def test_a_job_key_is_queued_once(queue: JobQueue) -> None:
    assert add(queue, new_job("1.1"))
    assert not add(queue, new_job("1.1"))
    assert add(queue, new_job("1.1", version=2))
    assert queue.counts() == {"queued": 2}


def test_urgent_jobs_are_claimed_before_routine_ones_and_fifo_within(queue: JobQueue) -> None:
    add(queue, new_job("routine-1"), now=1)
    add(queue, new_job("routine-2"), now=2)
    add(queue, new_job("urgent", "urgent"), now=3)
    order = []
    while (job := queue.claim("w", now=10, lease_seconds=60)) is not None:
        order.append(job.series_uid)
    assert order == ["urgent", "routine-1", "routine-2"]


def test_a_leased_job_is_not_claimed_twice_until_its_lease_expires(queue: JobQueue) -> None:
    add(queue, new_job("1.1"))
    first = queue.claim("worker-a", now=0, lease_seconds=30)
    assert first is not None and first.attempts == 1
    assert queue.claim("worker-b", now=29, lease_seconds=30) is None
    again = queue.claim("worker-b", now=31, lease_seconds=30)  # worker-a died
    assert again is not None and again.id == first.id and again.attempts == 2
    assert "lease of worker-a expired" in again.last_error
    with pytest.raises(LeaseLost):
        queue.heartbeat(first.id, "worker-a", now=32, lease_seconds=30)
    with pytest.raises(LeaseLost), queue.index.transaction() as db:
        JobQueue.mark_done(db, first.id, "worker-a", now=32)
    with queue.index.transaction() as db:
        JobQueue.mark_done(db, first.id, "worker-b", now=33)
    job = queue.get(first.id)
    assert job is not None and job.state is JobState.DONE


def test_heartbeats_keep_the_lease(queue: JobQueue) -> None:
    add(queue, new_job("1.1"))
    job = queue.claim("w", now=0, lease_seconds=30)
    assert job is not None
    for now in (20, 40, 60):
        queue.heartbeat(job.id, "w", now=now, lease_seconds=30)
    assert queue.claim("other", now=85, lease_seconds=30) is None


def test_failures_back_off_exponentially_then_dead_letter(queue: JobQueue) -> None:
    add(queue, new_job("1.1"))
    job = queue.claim("w", now=0, lease_seconds=30)
    assert job is not None
    assert queue.fail(job.id, "w", "boom 1", now=0) is JobState.QUEUED
    assert queue.claim("w", now=9, lease_seconds=30) is None  # backoff 10 s
    job = queue.claim("w", now=10, lease_seconds=30)
    assert job is not None and job.attempts == 2
    assert queue.fail(job.id, "w", "boom 2", now=10) is JobState.QUEUED
    assert queue.claim("w", now=29, lease_seconds=30) is None  # backoff 20 s
    job = queue.claim("w", now=30, lease_seconds=30)
    assert job is not None and job.attempts == 3
    assert queue.fail(job.id, "w", "boom 3", now=30) is JobState.DEAD
    assert queue.claim("w", now=10_000, lease_seconds=30) is None
    dead = queue.get(job.id)
    assert dead is not None and dead.state is JobState.DEAD and dead.last_error == "boom 3"

    assert queue.retry(job.id, now=10_001)
    again = queue.claim("w", now=10_001, lease_seconds=30)
    assert again is not None and again.attempts == 1


def test_a_permanent_failure_is_dead_at_once(queue: JobQueue) -> None:
    add(queue, new_job("1.1"))
    job = queue.claim("w", now=0, lease_seconds=30)
    assert job is not None
    assert queue.fail(job.id, "w", "not a volume", now=0, permanent=True) is JobState.DEAD


def test_a_job_that_kills_its_worker_every_time_ends_dead(queue: JobQueue) -> None:
    add(queue, new_job("1.1"))
    now = 0.0
    for _ in range(3):
        assert queue.claim("w", now=now, lease_seconds=30) is not None
        now += 31  # the worker died: no heartbeat, no outcome
    assert queue.claim("w", now=now, lease_seconds=30) is None
    assert queue.counts() == {"dead": 1}
    assert "lease expired" in queue.list()[0]["last_error"]


def test_a_database_from_before_ran_pipeline_gets_the_column(tmp_path: Path) -> None:
    """An index made by an earlier release (no ran_pipeline column) is migrated in place; its
    jobs keep their rows and read an empty ran_pipeline."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, route TEXT NOT NULL, "
                "pipeline TEXT NOT NULL, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL, series_version INTEGER NOT NULL, "
                "calling_ae TEXT NOT NULL DEFAULT '', destinations TEXT NOT NULL, priority INTEGER NOT NULL, "
                "state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL, "
                "not_before REAL NOT NULL, lease_owner TEXT, lease_expires REAL, last_error TEXT NOT NULL DEFAULT '', "
                "created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL)")
    old.execute("INSERT INTO jobs (key, route, pipeline, series_uid, study_uid, series_version, destinations, priority, "
                "state, max_attempts, not_before, created_at, updated_at) "
                "VALUES ('k', 'r', 'p', 's', 'st', 1, '[]', 0, 'done', 3, 0, 0, 0)")
    old.commit()
    old.close()
    index = Index(path)
    try:
        queue = JobQueue(index)
        [row] = queue.list()
        assert (row["key"], row["ran_pipeline"]) == ("k", "")
    finally:
        index.close()
