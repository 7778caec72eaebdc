"""The durable job queue, kept in the index database beside the series it is about.

A job is one route applied to one version of one completed series. Its life::

    queued --claim--> running --done--> done
      ^                  |  \\
      |  fail (attempts   |   lease expires (the worker died): claimable again
      +--- left, backoff) |
                          +--fail, no attempts left--> dead --retry (operator)--> queued
                          +--outside every pipeline's domain--> not applicable

* A worker *claims* the most urgent due job and holds it with a *lease* it renews (heartbeat)
  while it works. A worker that dies stops renewing; once the lease expires another worker
  claims the job again. Each claim counts as an attempt, so a job that kills its worker every
  time (say, out of memory) still ends dead instead of looping.
* The attempt number is the job's fencing token: each claim (or, on procrastinate, each start)
  increments it, and a worker's result commits only while the job is still at the attempt it
  was given. A worker that was taken for dead but was only slow finds its result void.
* Result objects have UIDs derived from the job key, so running a job twice replaces its
  results at the PACS rather than duplicating them.
* Who hands a queued job to a worker is the engine's business (job_engine.py): with the lease
  engine workers claim rows from this table; with procrastinate the row is also deferred as a
  procrastinate job (a ``Dispatch``) in the same transaction that queues it, and the worker
  that procrastinate gives it to *starts* it here. Either way this table is the record: state,
  attempts, errors, which pipeline ran; the outbox hangs off it.
* A job carries a queue (``default``, ``gpu``, or a pipeline's own): a worker takes only the
  queues it serves, so GPU pipelines reach GPU workers.
* Every function takes ``now`` from the caller (tests need no clock tricks).

The table's columns are the index schema's (dicom_node/storage/migrations: 0001 made it, 0002 added
``queue``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from ..errors import LeaseLost
from ..storage.events import emit
from ..storage.index import Index

DEFAULT_QUEUE = "default"

PRIORITIES = {"urgent": 10, "routine": 0}


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"
    #: The series is outside the domain of every pipeline the route names (the input gate):
    #: not a failure, never retried; ``last_error`` holds the reasons.
    NOT_APPLICABLE = "not applicable"


@dataclass(frozen=True)
class NewJob:
    key: str
    route: str
    pipeline: str
    series_uid: str
    study_uid: str
    series_version: int
    calling_ae: str
    destinations: tuple[str, ...]
    priority: str = "routine"
    queue: str = DEFAULT_QUEUE


@dataclass(frozen=True, kw_only=True)
class Job(NewJob):
    """A job as the queue holds it: what routing asked for (:class:`NewJob`) and where it
    stands (its row id, state, attempts, lease)."""

    id: int
    state: JobState
    attempts: int
    max_attempts: int
    lease_owner: str | None
    last_error: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        names = {rank: name for name, rank in PRIORITIES.items()}
        return cls(key=row["key"], route=row["route"], pipeline=row["pipeline"], series_uid=row["series_uid"],
                   study_uid=row["study_uid"], series_version=row["series_version"], calling_ae=row["calling_ae"],
                   destinations=tuple(json.loads(row["destinations"])),
                   priority=names.get(row["priority"], str(row["priority"])), queue=row["queue"], id=row["id"],
                   state=JobState(row["state"]), attempts=row["attempts"], max_attempts=row["max_attempts"],
                   lease_owner=row["lease_owner"], last_error=row["last_error"])


def job_key(route: str, series_uid: str, version: int) -> str:
    """The identity a job's result UIDs derive from."""
    return f"{route}:{series_uid}:v{version}"


class Dispatch(Protocol):
    """An external engine that must hear of every job that becomes queued, in the transaction
    that queues it (job_engine.ProcrastinateDispatch)."""

    def defer(self, db: Any, job_id: int, queue: str, priority: int, not_before: float | None) -> None: ...


def _fence(attempt: int | None) -> tuple[str, tuple[int, ...]]:
    """The SQL condition (and its parameter) that a result belongs to the job's current attempt."""
    return ("", ()) if attempt is None else (" AND attempts = ?", (attempt,))


class JobQueue:
    """The jobs table, through the node's :class:`Index` (same database, same write lock)."""

    def __init__(self, index: Index, max_attempts: int = 3, retry_base_seconds: float = 30.0,
                 dispatch: Dispatch | None = None) -> None:
        self.index = index
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.dispatch = dispatch

    # -- producing -------------------------------------------------------------------------

    @staticmethod
    def add(db: sqlite3.Connection, job: NewJob, now: float, max_attempts: int, dispatch: Dispatch | None = None) -> bool:
        """Queue ``job`` inside the caller's transaction (and defer it to ``dispatch``'s engine
        in the same one); False if its key is already queued."""
        row = db.execute(
            """
            INSERT INTO jobs(key, route, pipeline, series_uid, study_uid, series_version, calling_ae, destinations,
                priority, state, attempts, max_attempts, not_before, created_at, updated_at, queue)
            VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?)
            ON CONFLICT(key) DO NOTHING
            RETURNING id
            """,
            (job.key, job.route, job.pipeline, job.series_uid, job.study_uid, job.series_version, job.calling_ae,
             json.dumps(list(job.destinations)), PRIORITIES[job.priority], max_attempts, now, now, now, job.queue),
        ).fetchone()
        if row is None:
            return False
        if dispatch is not None:
            dispatch.defer(db, row[0], job.queue, PRIORITIES[job.priority], None)
        return True

    # -- consuming -------------------------------------------------------------------------

    def claim(self, owner: str, now: float, lease_seconds: float, queues: Sequence[str] | None = None) -> Job | None:
        """The most urgent due job (queued, or running with an expired lease) of ``queues``
        (None: any), now leased to ``owner``; None when there is nothing to do. The lease
        engine's way in; procrastinate's is :meth:`start`."""
        in_queues = "" if queues is None else f" AND queue IN ({', '.join('?' * len(queues))})"
        with self.index.transaction() as db:
            # Expired leases whose job has used every attempt: the worker died on it each time.
            db.execute(
                """
                UPDATE jobs SET state = 'dead', lease_owner = NULL, lease_expires = NULL, updated_at = ?,
                    finished_at = ?, last_error = 'worker stopped (lease expired) on every attempt; last: ' || last_error
                WHERE state = 'running' AND lease_expires < ? AND attempts >= max_attempts
                """,
                (now, now, now),
            )
            row = db.execute(
                """
                UPDATE jobs SET state = 'running', lease_owner = ?, lease_expires = ?, attempts = attempts + 1,
                    updated_at = ?,
                    last_error = CASE WHEN state = 'running' THEN 'lease of ' || lease_owner || ' expired' ELSE last_error END
                WHERE id = (
                    SELECT id FROM jobs
                    WHERE ((state = 'queued' AND not_before <= ?) OR (state = 'running' AND lease_expires < ?))""" + in_queues
                + """
                    ORDER BY priority DESC, created_at, id LIMIT 1
                )
                RETURNING *
                """,
                (owner, now + lease_seconds, now, now, now, *(queues or ())),
            ).fetchone()
        return Job.from_row(row) if row is not None else None

    def start(self, job_id: int, owner: str, now: float, lease_seconds: float) -> Job | None:
        """Job ``job_id``, now running under ``owner`` at its next attempt: the way in for a
        worker an engine handed the job to (procrastinate). A job found running is one whose
        worker the engine took for dead: its attempt counts, and a job that has used every
        attempt ends dead. None when there is nothing to run (finished, dead, unknown)."""
        with self.index.transaction() as db:
            db.execute(
                """
                UPDATE jobs SET state = 'dead', lease_owner = NULL, lease_expires = NULL, updated_at = ?,
                    finished_at = ?, last_error = 'worker stopped on every attempt; last: ' || last_error
                WHERE id = ? AND state = 'running' AND attempts >= max_attempts
                """,
                (now, now, job_id),
            )
            row = db.execute(
                """
                UPDATE jobs SET state = 'running', lease_owner = ?, lease_expires = ?, attempts = attempts + 1,
                    updated_at = ?,
                    last_error = CASE WHEN state = 'running' THEN 'worker ' || lease_owner || ' stopped' ELSE last_error END
                WHERE id = ? AND state IN ('queued', 'running')
                RETURNING *
                """,
                (owner, now + lease_seconds, now, job_id),
            ).fetchone()
        return Job.from_row(row) if row is not None else None

    def heartbeat(self, job_id: int, owner: str, now: float, lease_seconds: float, attempt: int | None = None) -> None:
        """Extend the lease; LeaseLost if the job is no longer this owner's (at ``attempt``)."""
        fence, value = _fence(attempt)
        with self.index.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_expires = ?, updated_at = ? WHERE id = ? AND lease_owner = ? AND state = 'running'"
                + fence,
                (now + lease_seconds, now, job_id, owner, *value),
            )
            if cursor.rowcount != 1:
                raise LeaseLost(f"job {job_id} is no longer leased to {owner}")

    @staticmethod
    def mark_done(db: sqlite3.Connection, job_id: int, owner: str, now: float, ran_pipeline: str = "",
                  attempt: int | None = None) -> None:
        """Finish a job inside the caller's transaction (the one that queues its deliveries);
        ``ran_pipeline``: which of the route's pipelines ran; ``attempt``: the fencing token
        (LeaseLost, and the caller's transaction rolls back, when the job moved past it)."""
        fence, value = _fence(attempt)
        cursor = db.execute(
            """
            UPDATE jobs SET state = 'done', lease_owner = NULL, lease_expires = NULL, updated_at = ?, finished_at = ?,
                last_error = '', ran_pipeline = ?
            WHERE id = ? AND lease_owner = ? AND state = 'running'""" + fence,
            (now, now, ran_pipeline, job_id, owner, *value),
        )
        if cursor.rowcount != 1:
            raise LeaseLost(f"job {job_id} is no longer leased to {owner}")

    @staticmethod
    def mark_not_applicable(db: sqlite3.Connection, job_id: int, owner: str, reasons: str, now: float,
                            attempt: int | None = None) -> None:
        """End a job whose series no pipeline of its route may analyse (inside the caller's
        transaction, which may queue a report saying so)."""
        fence, value = _fence(attempt)
        cursor = db.execute(
            """
            UPDATE jobs SET state = 'not applicable', lease_owner = NULL, lease_expires = NULL, updated_at = ?,
                finished_at = ?, last_error = ?
            WHERE id = ? AND lease_owner = ? AND state = 'running'""" + fence,
            (now, now, reasons[:2000], job_id, owner, *value),
        )
        if cursor.rowcount != 1:
            raise LeaseLost(f"job {job_id} is no longer leased to {owner}")

    def fail(self, job_id: int, owner: str, error: str, now: float, permanent: bool = False,
             attempt: int | None = None) -> JobState:
        """Record a failed attempt: queued again after a backoff, or dead when no attempt is
        left (or the failure is ``permanent``: retrying cannot help)."""
        fence, value = _fence(attempt)
        with self.index.transaction() as db:
            row = db.execute("SELECT attempts, max_attempts, queue, priority, route, study_uid, series_uid FROM jobs "
                             "WHERE id = ? AND lease_owner = ? AND state = 'running'" + fence,
                             (job_id, owner, *value)).fetchone()
            if row is None:
                raise LeaseLost(f"job {job_id} is no longer leased to {owner}")
            dead = permanent or row["attempts"] >= row["max_attempts"]
            delay = self.retry_base_seconds * 2 ** (row["attempts"] - 1)
            db.execute(
                """
                UPDATE jobs SET state = ?, lease_owner = NULL, lease_expires = NULL, last_error = ?, not_before = ?,
                    updated_at = ?, finished_at = ?
                WHERE id = ?
                """,
                ("dead" if dead else "queued", error[:2000], now + delay, now, now if dead else None, job_id),
            )
            if not dead and self.dispatch is not None:
                self.dispatch.defer(db, job_id, row["queue"], row["priority"], now + delay)
            emit(db, "job.dead" if dead else "job.failed", study_uid=row["study_uid"], series_uid=row["series_uid"],
                 job_id=job_id, now=now, payload={"job": job_id, "route": row["route"], "error": error[:2000],
                                                  "attempt": row["attempts"], "retried": not dead})
        return JobState.DEAD if dead else JobState.QUEUED

    # -- operating -------------------------------------------------------------------------

    def retry(self, job_id: int, now: float) -> bool:
        """Queue a dead job again with fresh attempts (``dicom-node jobs --retry``)."""
        with self.index.transaction() as db:
            row = db.execute(
                """
                UPDATE jobs SET state = 'queued', attempts = 0, not_before = ?, updated_at = ?, finished_at = NULL
                WHERE id = ? AND state = 'dead'
                RETURNING queue, priority
                """,
                (now, now, job_id),
            ).fetchone()
            if row is not None and self.dispatch is not None:
                self.dispatch.defer(db, job_id, row["queue"], row["priority"], None)
        return row is not None

    def get(self, job_id: int) -> Job | None:
        rows = self.index.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        return [dict(r) for r in self.index.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.index.query("SELECT state, count(*) AS n FROM jobs GROUP BY state")}
