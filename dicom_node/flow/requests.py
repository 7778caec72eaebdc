"""Analysis on request: "fetch this study from that archive, run this route (or pipeline), send
the results there", from ``POST /api/requests``, ``dicom-node retrieve --analyse`` or a polled
source (polling.py, which asks for the retrieval alone and lets the rules decide).

A request lives in the index (``requests``), so a restart loses none::

    retrieving --retrieved--> waiting --every series complete--> queued (jobs made) --> done
        |  (peer refused / timed out: retried, then)                 |
        +--> failed, with the peer's answer                          +--> (state read from its jobs
                                                                          and their deliveries)

While a request with a route is open, the routing sweep holds the study's series from the rules
(routing.py asks :func:`held_studies`): what was asked for runs, not also whatever the rules would
pick. Its jobs have keys of their own (``request<id>:...``), so asking again for a study already
analysed runs it again, with new result UIDs. The state the API shows for a queued request is
read from its jobs and their deliveries: queued, running, delivering, delivered, or failed with
the job's or delivery's error. This module is the table and the holds (light: the listener's
routing sweep reads it); request_runner.py does the retrieving and queueing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Any

from ..config import NodeConfig
from ..errors import ConfigError
from ..storage.index import Index

log = logging.getLogger(__name__)

OPEN_STATES = ("retrieving", "waiting")


def held_studies(db: sqlite3.Connection, candidates: set[str]) -> set[str]:
    """Which of ``candidates`` the rules leave alone: an open request with a route or pipeline
    has them, or they came in as another study's priors (priors.py)."""
    held: set[str] = set()
    ordered = sorted(candidates)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start:start + 500]
        rows = db.execute(f"SELECT DISTINCT study_uid FROM requests WHERE study_uid IN ({', '.join('?' for _ in chunk)}) "
                          "AND (origin = 'prior' OR (state IN ('retrieving', 'waiting') AND (route != '' OR pipeline != '')))",
                          tuple(chunk)).fetchall()
        held.update(r["study_uid"] for r in rows)
    return held


class RequestStore:
    """The requests table: create, read, and the state a request is in."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def create(self, *, config: NodeConfig, source: str, study_uid: str = "", accession: str = "", route: str = "",
               pipeline: str = "", destinations: list[str] | None = None, origin: str = "api",
               now: float | None = None) -> int:
        """Record a request (ConfigError says what is wrong with it); return its id."""
        if bool(study_uid) == bool(accession):
            raise ConfigError("a request names a study: its Study Instance UID or its accession number (one of them)")
        if study_uid and not (len(study_uid) <= 64 and all(c.isdigit() or c == "." for c in study_uid)):
            raise ConfigError(f"{study_uid[:80]!r} is not a Study Instance UID")
        peer = config.peer(source)
        if not peer.query:
            raise ConfigError(f"peer {source} does not have query: true (the node may not retrieve from it)")
        if route and route not in {r.name for r in config.routes}:
            raise ConfigError(f"no route named {route!r} (known: {', '.join(r.name for r in config.routes) or 'none'})")
        if pipeline and pipeline not in config.pipelines:
            raise ConfigError(f"no pipeline named {pipeline!r} (known: {', '.join(sorted(config.pipelines)) or 'none'})")
        if route and pipeline:
            raise ConfigError("a request names a route or a pipeline, not both")
        for name in destinations or []:
            peer = config.peer(name)
            if not peer.receive:
                raise ConfigError(f"peer {name} has receive: false")
        now = time.time() if now is None else now
        with self.index.transaction() as db:
            request_id = self.insert(db, study_uid=study_uid, accession=accession, source=source, route=route,
                                     pipeline=pipeline, destinations=destinations or [], origin=origin, now=now)
        log.info("Request %d: study %s from %s, %s", request_id, study_uid or f"accession {accession}", source,
                 f"route {route}" if route else f"pipeline {pipeline}" if pipeline else "the rules decide")
        return request_id

    @staticmethod
    def insert(db: sqlite3.Connection, *, study_uid: str, accession: str, source: str, route: str, pipeline: str,
               destinations: list[str], origin: str, now: float) -> int:
        """Add a checked request in the caller's transaction; return its id."""
        row = db.execute(
            "INSERT INTO requests(study_uid, accession, source, route, pipeline, destinations, origin, state, "
            "next_attempt_at, created_at, updated_at) VALUES(?, ?, ?, ?, ?, ?, ?, 'retrieving', ?, ?, ?) RETURNING id",
            (study_uid, accession, source, route, pipeline, json.dumps(destinations), origin, now, now, now),
        ).fetchone()
        return int(row[0])

    def get(self, request_id: int) -> dict[str, Any] | None:
        rows = self.index.query("SELECT * FROM requests WHERE id = ?", (request_id,))
        return self.describe(rows[0]) if rows else None

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        return [self.describe(r) for r in self.index.query("SELECT * FROM requests ORDER BY id DESC LIMIT ?", (limit,))]

    def describe(self, row: Any) -> dict[str, Any]:
        """The request as the API shows it, its state read through to its jobs and deliveries."""
        request = dict(row)
        request["destinations"] = json.loads(request["destinations"])
        request["jobs"] = json.loads(request["jobs"])
        if request["state"] == "queued":
            request["state"], why = self._progress(request["jobs"])
            if why:
                request["detail"] = why
        return request

    def _progress(self, job_ids: list[int]) -> tuple[str, str]:
        if not job_ids:
            return "delivered", ""
        marks = ", ".join("?" for _ in job_ids)
        jobs = self.index.query(f"SELECT id, state, last_error FROM jobs WHERE id IN ({marks})", tuple(job_ids))
        states = {j["state"] for j in jobs}
        dead = [j for j in jobs if j["state"] == "dead"]
        if dead:
            return "failed", f"job {dead[0]['id']}: {dead[0]['last_error']}"
        if "running" in states:
            return "running", ""
        if "queued" in states:
            return "queued", ""
        deliveries = self.index.query(f"SELECT state, peer, last_error FROM deliveries WHERE job_id IN ({marks})",
                                      tuple(job_ids))
        failed = [d for d in deliveries if d["state"] == "dead"]
        if failed:
            return "failed", f"delivery to {failed[0]['peer']}: {failed[0]['last_error']}"
        if any(d["state"] == "pending" for d in deliveries):
            return "delivering", ""
        if states == {"not applicable"}:
            return "not applicable", "; ".join(sorted({j["last_error"] for j in jobs if j["last_error"]}))[:500]
        return "delivered", ""
