"""The outbox: one row per result object per destination, done only when the peer said Success.

A row holds the object's *candidates*: the same result in the encodings the destination may
take (a JPEG 2000 SEG, a Label Map SEG with its own SR, plain BINARY last), each tagged with a
variant name. The sender picks, per association, the first variant the peer accepts for every
object of the job, so a SEG and the SR that references it always travel together.

Life of a row::

    pending --sent, Success--> delivered
       ^  |
       |  +--failure: retry after base * 2^attempts (capped)--+
       +------------------------------------------------------+
       |  still failing give_up_after_seconds after queueing --> dead --retry (operator)--> pending
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..storage.events import emit
from ..storage.index import Index

FORWARD_PREFIX = "forward:"


def forward_key(route: str, series_uid: str, version: int) -> str:
    """The outbox group of a route's forward of one series version: one association per peer."""
    return f"{FORWARD_PREFIX}{route}:{series_uid}:v{version}"


def is_forward(job_key: str) -> bool:
    """Whether an outbox group forwards received instances (not results of a job)."""
    return job_key.startswith(FORWARD_PREFIX)


class DeliveryState(str, Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True)
class Candidate:
    """One encoding of a result object: a Part 10 file and what it needs negotiated."""

    variant: str
    path: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Delivery:
    id: int
    job_id: int
    job_key: str
    object: str  # "seg" | "sr" | a forwarded instance's SOP Instance UID
    peer: str
    candidates: tuple[Candidate, ...]
    attempts: int
    queued_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Delivery:
        candidates = tuple(Candidate(**c) for c in json.loads(row["candidates"]))
        return cls(row["id"], row["job_id"], row["job_key"], row["object"], row["peer"], candidates, row["attempts"],
                   row["queued_at"])


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float
    max_seconds: float
    give_up_after_seconds: float

    def delay(self, attempts: int) -> float:
        return min(self.max_seconds, self.base_seconds * 2 ** max(0, attempts - 1))


class Outbox:
    def __init__(self, index: Index) -> None:
        self.index = index

    @staticmethod
    def add(db: sqlite3.Connection, job_id: int, job_key: str, obj: str, peer: str, candidates: list[Candidate],
            now: float) -> None:
        """Queue (or, for a re-run job, re-queue) one object for one peer, in the caller's transaction."""
        db.execute(
            """
            INSERT INTO deliveries(job_id, job_key, object, peer, candidates, state, attempts, next_attempt_at, queued_at)
            VALUES(?, ?, ?, ?, ?, 'pending', 0, ?, ?)
            ON CONFLICT(job_key, object, peer) DO UPDATE SET
                job_id = excluded.job_id, candidates = excluded.candidates, state = 'pending', attempts = 0,
                next_attempt_at = excluded.next_attempt_at, queued_at = excluded.queued_at, last_error = '',
                delivered_at = NULL, delivered_variant = NULL
            """,
            (job_id, job_key, obj, peer, json.dumps([c.__dict__ for c in candidates]), now, now),
        )

    def due(self, now: float, limit: int = 2000) -> list[Delivery]:
        rows = self.index.query(
            "SELECT * FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
            (now, limit),
        )
        return [Delivery.from_row(r) for r in rows]

    def delivered(self, delivery_id: int, variant: str, now: float) -> None:
        with self.index.transaction() as db:
            db.execute(
                """
                UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, delivered_at = ?, delivered_variant = ?,
                    last_error = ''
                WHERE id = ?
                """,
                (now, variant, delivery_id),
            )

    def failed(self, delivery: Delivery, error: str, now: float, policy: RetryPolicy,
               permanent: bool = False) -> DeliveryState:
        """Record a failed attempt; dead once it has failed for longer than the policy allows, or
        at once when ``permanent`` (the peer refused this object: sending it again cannot help)."""
        attempts = delivery.attempts + 1
        dead = permanent or now - delivery.queued_at >= policy.give_up_after_seconds
        with self.index.transaction() as db:
            db.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                ("dead" if dead else "pending", attempts, now + policy.delay(attempts), error[:2000], delivery.id),
            )
            if dead:
                job = db.execute("SELECT study_uid, series_uid FROM jobs WHERE id = ?", (delivery.job_id,)).fetchone() \
                    if delivery.job_id else None
                emit(db, "delivery.dead", study_uid=job["study_uid"] if job else "", series_uid=job["series_uid"] if job else "",
                     job_id=delivery.job_id or None, now=now,
                     payload={"delivery": delivery.id, "peer": delivery.peer, "object": delivery.object,
                              "job_key": delivery.job_key, "error": error[:2000], "attempts": attempts})
        return DeliveryState.DEAD if dead else DeliveryState.PENDING

    def retry(self, delivery_id: int, now: float, include_pending: bool = False) -> bool:
        """Queue a dead delivery again (``dicom-node jobs --retry-delivery``); with
        ``include_pending``, also try a pending one now instead of at its next backoff (the
        dashboard's retry button)."""
        states = ("dead", "pending") if include_pending else ("dead",)
        with self.index.transaction() as db:
            cursor = db.execute(
                f"""
                UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, queued_at = ?
                WHERE id = ? AND state IN ({", ".join("?" for _ in states)})
                """,
                (now, now, delivery_id, *states),
            )
        return cursor.rowcount == 1

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        return [dict(r) for r in self.index.query("SELECT * FROM deliveries ORDER BY id DESC LIMIT ?", (limit,))]

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.index.query("SELECT state, count(*) AS n FROM deliveries GROUP BY state")}
