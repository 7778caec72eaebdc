"""Routing: completed series -> jobs and forwards, by the ``routes`` of the configuration.

Routing is a sweep over the index, like completion: every series whose completed version has
not been routed yet is matched against each route, matching routes become jobs, and the
series is marked routed at that version, all in one transaction. So a crash between
"complete" and "queued" loses nothing (the next sweep routes it), and a series is never routed
twice for the same version. A late instance re-opens the series at version + 1, which is
routed again once complete.

A route's ``forward`` peers get the series' instances unchanged, through the outbox (the
sender's retries and backoff, one association per series and peer): at version 1 every
instance, at a later version only those that arrived (new or changed) since the one before. A
peer that does not accept the stored transfer syntax gets them decompressed (transcode.py).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Mapping
from typing import Any

from .config import NodeConfig, Peer, Route
from .index import Index
from .jobs import JobQueue, NewJob, job_key
from .outbox import Candidate, Outbox, forward_key
from .transcode import UNCOMPRESSED_VARIANTS

#: The outbox variant name of an instance forwarded as it was received.
ORIGINAL = "original"

log = logging.getLogger(__name__)


def matches(route: Route, series: Mapping[str, Any]) -> bool:
    """Whether a series row (modality, body part, description, calling AE, count) fits ``route``."""
    rule = route.match

    def one_of(values: list[str], value: str) -> bool:
        return not values or value.strip().upper() in {v.strip().upper() for v in values}

    return (
        one_of(rule.modality, str(series["modality"]))
        and one_of(rule.body_part_examined, str(series["body_part_examined"]))
        and one_of(rule.calling_ae, str(series["calling_ae"]))
        and (rule.series_description is None
             or re.search(rule.series_description, str(series["series_description"]), re.IGNORECASE) is not None)
        and int(series["instance_count"]) >= rule.min_instances
    )


def resolve_destinations(route: Route, calling_ae: str, peers: list[Peer]) -> list[str]:
    """Peer names for a route's destinations; ``sender`` is the peer with the calling AE title,
    when it may receive (otherwise it is dropped, with a warning)."""
    names: list[str] = []
    for name in route.destinations:
        if name == "sender":
            sender = next((p for p in peers if p.ae_title == calling_ae and p.receive), None)
            if sender is None:
                log.warning("Route %s: the sender %r is not a peer that may receive results; not returning to it",
                            route.name, calling_ae)
                continue
            name = sender.name
        if name not in names:
            names.append(name)
    return names


def route_completed(index: Index, config: NodeConfig, now: float) -> list[NewJob]:
    """Queue jobs for every completed, not yet routed series version; return what was queued."""
    queued: list[NewJob] = []
    with index.transaction() as db:
        rows = db.execute(
            "SELECT * FROM series WHERE state = 'complete' AND routed_version < version ORDER BY completed_at"
        ).fetchall()
        for series in rows:
            queued.extend(_route_one(db, series, config, now))
            db.execute("UPDATE series SET routed_version = ? WHERE series_uid = ?", (series["version"], series["series_uid"]))
    for job in queued:
        log.info("Series %s v%d -> route %s, pipeline %s, results to %s", job.series_uid, job.series_version, job.route,
                 job.pipeline, ", ".join(job.destinations) or "nobody")
    return queued


def _forward(db: sqlite3.Connection, route_name: str, peers: list[str], series: sqlite3.Row, now: float) -> None:
    """Queue the instances received at this series version for each forward peer."""
    rows = db.execute(
        "SELECT sop_instance_uid, sop_class_uid, transfer_syntax_uid, path FROM instances "
        "WHERE series_uid = ? AND series_version = ? ORDER BY instance_number, sop_instance_uid",
        (series["series_uid"], series["version"]),
    ).fetchall()
    key = forward_key(route_name, series["series_uid"], series["version"])
    for peer in peers:
        for row in rows:
            candidates = [Candidate(ORIGINAL, row["path"], row["sop_class_uid"], row["transfer_syntax_uid"], row["sop_instance_uid"])]
            # Uncompressed alternatives for a peer that does not take the stored syntax (transcode.py).
            candidates += [Candidate(variant, row["path"], row["sop_class_uid"], str(syntax), row["sop_instance_uid"])
                           for variant, syntax in UNCOMPRESSED_VARIANTS.items()]
            Outbox.add(db, 0, key, row["sop_instance_uid"], peer, candidates, now)
    if rows:
        log.info("Series %s v%d -> route %s forwards %d instance(s) to %s", series["series_uid"], series["version"],
                 route_name, len(rows), ", ".join(peers))


def _route_one(db: sqlite3.Connection, series: sqlite3.Row, config: NodeConfig, now: float) -> list[NewJob]:
    jobs = []
    matched = [route for route in config.routes if matches(route, series)]
    if not matched:
        log.info("Series %s v%d (%s, %d instance(s)) matched none of the routes (%s): stored, not analysed",
                 series["series_uid"], series["version"], series["modality"] or "no modality", series["instance_count"],
                 ", ".join(route.name for route in config.routes) or "none configured")
    for route in matched:
        if route.forward:
            _forward(db, route.name, route.forward, series, now)
        if not route.pipeline_names:
            continue
        job = NewJob(
            key=job_key(route.name, series["series_uid"], series["version"]),
            route=route.name,
            pipeline=",".join(route.pipeline_names),  # tried in order by the worker's gate
            series_uid=series["series_uid"],
            study_uid=series["study_uid"],
            series_version=series["version"],
            calling_ae=series["calling_ae"],
            destinations=tuple(resolve_destinations(route, series["calling_ae"], config.peers)),
            priority=route.priority,
        )
        if JobQueue.add(db, job, now, config.jobs.max_attempts):
            jobs.append(job)
    return jobs
