"""Rules with ``trigger: study``: they wait for the study (quiet time, or required series with a
maximum wait) and keep their decision per study version in ``study_routes``; a study is marked
routed at a version once every study rule has decided."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from ..config import NodeConfig, Route
from ..config.rules import RuleFacts
from .jobs import NewJob
from .route_actions import act
from .rule_evaluation import rule_facts

log = logging.getLogger(__name__)


def route_studies(db: sqlite3.Connection, config: NodeConfig, now: float, held: frozenset[str] = frozenset()) -> list[NewJob]:
    """Decide the study rules of every study version not yet routed, in the caller's transaction.

    A rule decides once per study version: ``fired`` (it acted on the study's matching complete
    series), ``no-match``, ``discarded`` (its wait ran out with ``on_timeout: discard``),
    ``not-reached`` (an earlier rule stopped) or ``not-needed`` (a fallback, another rule
    fired). A rule still waiting holds back the rules after it only if it would stop them."""
    rules = [r for r in config.routes if r.trigger == "study"]
    if not rules:
        db.execute("UPDATE studies SET routed_version = version WHERE routed_version < version")
        return []
    ordered = [r for r in rules if not r.fallback] + [r for r in rules if r.fallback]
    queued: list[NewJob] = []
    for study in db.execute("SELECT * FROM studies WHERE routed_version < version").fetchall():
        if study["study_uid"] in held:
            continue
        decided = {r["route"]: r["outcome"] for r in db.execute(
            "SELECT route, outcome FROM study_routes WHERE study_uid = ? AND version = ?", (study["study_uid"], study["version"]))}
        series_rows = db.execute("SELECT * FROM series WHERE study_uid = ? ORDER BY series_number, series_uid",
                                 (study["study_uid"],)).fetchall()
        complete = [s for s in series_rows if s["state"] == "complete"]
        known: list[tuple[sqlite3.Row, RuleFacts]] = []

        def facts() -> list[tuple[sqlite3.Row, RuleFacts]]:
            """The complete series' facts, read only when a rule needs them (most sweeps: none)."""
            if not known:
                known.extend((row, rule_facts(db, row, config.peers)) for row in complete)
            return known
        for position, rule in enumerate(ordered):
            if rule.name in decided:
                continue
            earlier = ordered[:position]
            stopped = next((r.name for r in earlier if r.stops and decided.get(r.name) == "fired"), "")
            fired = next((r.name for r in earlier if decided.get(r.name) == "fired"), "")
            if not stopped and any(r.name not in decided and (r.stops or rule.fallback) for r in earlier):
                continue  # an earlier rule has not decided, and its decision may settle this one
            if stopped:
                outcome, reason = "not-reached", f"rule {stopped} fired and stops"
            elif rule.fallback and fired:
                outcome, reason = "not-needed", f"rule {fired} fired"
            else:
                state, reason = _study_ready(rule, study, lambda: [f for _, f in facts()], len(complete) == len(series_rows),
                                             now, config.completion.study_stable_seconds)
                if state == "wait":
                    continue
                if state == "discard":
                    outcome = "discarded"
                    log.warning("Study %s v%d: route %s discards it: %s", study["study_uid"], study["version"], rule.name, reason)
                else:
                    if state == "timeout":
                        log.warning("Study %s v%d: route %s processes what is there: %s", study["study_uid"],
                                    study["version"], rule.name, reason)
                    matching = [(row, rule.condition.evaluate(f)) for row, f in facts()]
                    acting = [row for row, verdict in matching if verdict.holds]
                    if not acting:
                        outcome = "no-match"
                        reason = "; ".join(f"series {row['series_uid']}: {v.reason}" for row, v in matching) or "no complete series"
                    else:
                        outcome = "fired"
                        for row in acting:
                            job = act(db, rule, row, config, now, once=True)
                            if job is not None:
                                queued.append(job)
                        log.info("Study %s v%d -> route %s on %d of its %d series (%s)", study["study_uid"],
                                 study["version"], rule.name, len(acting), len(series_rows), reason)
            decided[rule.name] = outcome
            db.execute("INSERT INTO study_routes(study_uid, version, route, outcome, reason, decided_at) VALUES(?, ?, ?, ?, ?, ?)",
                       (study["study_uid"], study["version"], rule.name, outcome, reason, now))
        if all(r.name in decided for r in rules):
            db.execute("UPDATE studies SET routed_version = ? WHERE study_uid = ?", (study["version"], study["study_uid"]))
    return queued


def _study_ready(rule: Route, study: sqlite3.Row, facts: Callable[[], list[RuleFacts]], all_complete: bool,
                 now: float, default_quiet: float) -> tuple[str, str]:
    """('ready' | 'wait' | 'timeout' | 'discard', why) for a study rule."""
    waited = now - float(study["version_started_at"])
    limit = rule.study.max_wait_seconds
    if rule.required_series:
        missing = [c.describe() for c in rule.required_series if not any(c.evaluate(f).holds for f in facts())]
        if not missing:
            return "ready", f"every required series is there ({len(rule.required_series)})"
        why = f"waited {waited:.0f} s of {limit:.0f} s; missing a series with {' | '.join(missing)}"
    else:
        quiet = rule.study.quiet_seconds or default_quiet
        if all_complete and now - float(study["last_received_at"]) >= quiet:
            return "ready", f"quiet for {quiet:.0f} s"
        why = f"waited {waited:.0f} s of {limit or 0:.0f} s for the study to be quiet {quiet:.0f} s"
    if limit is not None and waited >= limit:
        return ("timeout" if rule.study.on_timeout == "process" else "discard"), why
    return "wait", why
