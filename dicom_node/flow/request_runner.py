"""Moving requests along (requests.py has the table and the life of a request): retrieve those
in ``retrieving`` from their source (retrieval.py, retried a minute apart, then failed with the
peer's answer), and once every series of the study is complete, queue the request's jobs."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import NodeConfig, Route
from ..errors import ConfigError, IndexError_, PeerError
from ..periodic import PeriodicTask
from ..storage.audit import AuditLog
from ..storage.index import Index
from ..storage.store import InstanceStore
from .job_engine import dispatch_for, queue_for
from .jobs import JobQueue, NewJob, job_key
from .requests import RequestStore
from .retrieval import find, query_peer, retrieve, study_for_accession
from .rule_evaluation import resolve_destinations

log = logging.getLogger(__name__)

#: A retrieval the peer refused or that timed out is tried this many times, a minute apart.
MAX_ATTEMPTS = 3
RETRY_SECONDS = 60.0


class RequestRunner:
    """Moves open requests along, one pass at a time (a PeriodicTask in the process that runs
    completion and routing): retrieve those in ``retrieving``, queue the jobs of those whose
    study is complete."""

    def __init__(self, config: NodeConfig, index: Index, store: InstanceStore, audit: AuditLog | None = None,
                 clock: Callable[[], float] = time.time, interval_seconds: float = 1.0,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self.config, self.index, self.store, self.audit, self.clock = config, index, store, audit, clock
        self.retry_seconds = retry_seconds
        self.requests = RequestStore(index)
        self._task = PeriodicTask("requests", self.run_once, interval_seconds)

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stop()

    def run_once(self) -> None:
        try:
            due = self.index.query("SELECT * FROM requests WHERE state = 'retrieving' AND next_attempt_at <= ? "
                                   "ORDER BY id LIMIT 5", (self.clock(),))
            for row in due:
                self._retrieve(row)
            for row in self.index.query("SELECT * FROM requests WHERE state = 'waiting' ORDER BY id"):
                self._queue_when_complete(row)
        except IndexError_ as exc:
            log.error("Requests: the index failed, will try again: %s", exc)

    def _set(self, request_id: int, **fields: Any) -> None:
        fields["updated_at"] = self.clock()
        with self.index.transaction() as db:
            db.execute(f"UPDATE requests SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                       (*fields.values(), request_id))

    def _retrieve(self, row: Any) -> None:
        request_id = int(row["id"])
        try:
            peer = query_peer(self.config, row["source"])
            study = row["study_uid"] or study_for_accession(self.config, peer, row["accession"])
            if study != row["study_uid"]:
                self._set(request_id, study_uid=study)
            elif not find(self.config, peer, "STUDY", {"StudyInstanceUID": study}):
                self._set(request_id, state="failed", detail=f"{peer.name} has no study {study}")
                log.error("Request %d failed: %s has no study %s", request_id, peer.name, study)
                return
            report = retrieve(self.config, peer, study, self.store, self.index, self.audit)
        except (PeerError, ConfigError) as exc:
            attempts = int(row["attempts"]) + 1
            if attempts >= MAX_ATTEMPTS or isinstance(exc, ConfigError):
                self._set(request_id, state="failed", attempts=attempts, detail=f"retrieve: {exc}")
                log.error("Request %d failed after %d attempt(s): %s", request_id, attempts, exc)
            else:
                self._set(request_id, attempts=attempts, next_attempt_at=self.clock() + self.retry_seconds,
                          detail=f"retrieve attempt {attempts} failed, trying again: {exc}")
                log.warning("Request %d: retrieve attempt %d failed (%s); again in %.0f s", request_id, attempts, exc,
                            self.retry_seconds)
            return
        detail = (f"retrieved {report.stored} instance(s) ({report.duplicates} already held) from {row['source']} "
                  f"in {report.seconds:.1f} s")
        if report.refused:
            detail += f"; {len(report.refused)} not taken: {report.refused[0]}"
        if report.stored == 0 and report.completed == 0:
            self._set(request_id, state="failed", detail=f"{row['source']} returned no instances of study {study}")
            return
        if not row["route"] and not row["pipeline"]:  # the rules decide, as for any study that arrives
            self._set(request_id, state="done", detail=detail)
        else:
            self._set(request_id, state="waiting", detail=detail)
        log.info("Request %d: %s", request_id, detail)

    def _queue_when_complete(self, row: Any) -> None:
        request_id = int(row["id"])
        series = self.index.query("SELECT * FROM series WHERE study_uid = ? ORDER BY series_number, series_uid",
                                  (row["study_uid"],))
        if not series or any(s["state"] != "complete" for s in series):
            return  # instances still arriving (or the completion sweep not yet passed)
        route = self._route_for(row)
        if route is None:
            self._set(request_id, state="failed", detail=f"route {row['route']} is no longer configured")
            return
        destinations = json.loads(row["destinations"])
        now = self.clock()
        job_ids = []
        with self.index.transaction() as db:
            for one in series:
                job = NewJob(
                    key=f"request{request_id}:" + job_key(route.name, one["series_uid"], one["version"]),
                    route=route.name, pipeline=",".join(route.pipeline_names), series_uid=one["series_uid"],
                    study_uid=one["study_uid"], series_version=one["version"], calling_ae=one["calling_ae"],
                    destinations=tuple(destinations or resolve_destinations(route, one["calling_ae"], self.config.peers)),
                    priority=route.priority, queue=queue_for(self.config, route.pipeline_names))
                JobQueue.add(db, job, now, self.config.jobs.max_attempts, dispatch_for(self.config))
                found = db.execute("SELECT id FROM jobs WHERE key = ?", (job.key,)).fetchone()
                if found is not None:
                    job_ids.append(int(found[0]))
            db.execute("UPDATE requests SET state = 'queued', jobs = ?, updated_at = ? WHERE id = ?",
                       (json.dumps(job_ids), now, request_id))
        log.info("Request %d: %d job(s) queued for study %s (route %s)", request_id, len(job_ids), row["study_uid"],
                 route.name)

    def _route_for(self, row: Any) -> Route | None:
        if row["route"]:
            return next((r for r in self.config.routes if r.name == row["route"]), None)
        if row["pipeline"] not in self.config.pipelines:
            return None
        # A pipeline asked for by name: its results go to the request's destinations (or nowhere).
        return Route(name=f"request-{row['id']}", pipeline=row["pipeline"], destinations=[])
