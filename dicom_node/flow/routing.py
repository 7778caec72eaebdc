"""Routing: completed series and studies -> jobs and forwards, by the ``routes`` of the configuration.

Routing is a sweep over the index, like completion: every series whose completed version has
not been routed yet is evaluated against the rules, the rules that act on it become jobs and
forwards, and the series is marked routed at that version, all in one transaction. So a crash
between "complete" and "queued" loses nothing (the next sweep routes it), and a series is never
routed twice for the same version. A late instance re-opens the series at version + 1, which is
routed again once complete.

Routing by trigger and by action, one module each: what the rules see and the order they are
evaluated in (rule_evaluation.py), study rules (study_routing.py), and what a firing rule does:
jobs, forwards, de-identified forwards, returned results (route_actions.py). This module is the
sweep that ties them together. A study an open request asked for (requests.py) is left to the
request's route.
"""

from __future__ import annotations

import logging
import sqlite3

from ..config import NodeConfig, Route
from ..logs import log_context
from ..privacy.reidentify import returning
from ..storage.index import Index
from .jobs import NewJob
from .requests import held_studies
from .route_actions import act, route_returned
from .rule_evaluation import evaluate_rules, rule_facts
from .study_routing import route_studies

log = logging.getLogger(__name__)


def route_completed(index: Index, config: NodeConfig, now: float) -> list[NewJob]:
    """Queue jobs for every completed, not yet routed series version and every study whose
    study rules are ready; return what was queued."""
    queued: list[NewJob] = []
    series_rules = [r for r in config.routes if r.trigger == "series"]
    with index.transaction() as db:
        rows = db.execute(
            "SELECT * FROM series WHERE state = 'complete' AND routed_version < version ORDER BY completed_at"
        ).fetchall()
        returns_possible = any(r.deidentifies for r in config.routes)
        unrouted = {r["study_uid"] for r in db.execute("SELECT study_uid FROM studies WHERE routed_version < version")}
        held = frozenset(held_studies(db, {r["study_uid"] for r in rows} | unrouted))
        for series in rows:
            with log_context(study_uid=series["study_uid"], series_uid=series["series_uid"]):
                back = returning(db, series["study_uid"], series["calling_ae"], config.peers) if returns_possible else None
                if series["study_uid"] in held:
                    log.info("Series %s v%d: its study was asked for by a request; the request's route runs, not the "
                             "rules", series["series_uid"], series["version"])
                elif back is not None:
                    route_returned(db, series, back, config, now)
                else:
                    queued.extend(_route_series(db, series, series_rules, config, now))
            db.execute("UPDATE series SET routed_version = ? WHERE series_uid = ?", (series["version"], series["series_uid"]))
        queued.extend(route_studies(db, config, now, held))
    for job in queued:
        log.info("Series %s v%d -> route %s, pipeline %s, results to %s", job.series_uid, job.series_version, job.route,
                 job.pipeline, ", ".join(job.destinations) or "nobody")
    return queued


def _route_series(db: sqlite3.Connection, series: sqlite3.Row, rules: list[Route], config: NodeConfig,
                  now: float) -> list[NewJob]:
    if not rules:
        return []
    facts = rule_facts(db, series, config.peers)
    evaluations = evaluate_rules(rules, facts)
    acting = [e for e in evaluations if e.acts]
    if not acting:
        reasons = "; ".join(f"{e.route.name}: {e.verdict.reason}" for e in evaluations)
        log.info("Series %s v%d (%s, %d instance(s)) matched none of the rules, stored, not analysed (%s)",
                 series["series_uid"], series["version"], series["modality"] or "no modality", series["instance_count"],
                 reasons)
    jobs = []
    for evaluation in acting:
        job = act(db, evaluation.route, series, config, now)
        if job is not None:
            jobs.append(job)
    return jobs
