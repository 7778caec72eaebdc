"""Routing: completed series and studies -> jobs and forwards, by the ``routes`` of the configuration.

Routing is a sweep over the index, like completion: every series whose completed version has
not been routed yet is evaluated against the rules, the rules that act on it become jobs and
forwards, and the series is marked routed at that version, all in one transaction. So a crash
between "complete" and "queued" loses nothing (the next sweep routes it), and a series is never
routed twice for the same version. A late instance re-opens the series at version + 1, which is
routed again once complete.

Rules (config.Route, conditions in rules.py) are evaluated in the order written: ``on_match:
stop`` (or ``discard``) ends the evaluation, ``continue`` lets later rules act too, and a
``fallback`` rule acts only when no other rule of its trigger matched. ``trigger: study`` rules
wait for the study (quiet time, or required series with a maximum wait) and keep their decision
per study version in ``study_routes``; a study is marked routed at a version once every study
rule has decided.

A rule's ``forward`` peers get the series' instances unchanged, through the outbox (the
sender's retries and backoff, one association per series and peer): at version 1 every
instance, at a later version only those that arrived (new or changed) since the one before. A
peer that does not accept the stored transfer syntax gets them decompressed (transcode.py).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..config import NodeConfig, Peer, Route
from ..config.rules import SeriesFacts, Verdict
from ..errors import ConfigError
from ..logs import log_context
from ..privacy.deidentify import Deidentifier, deidentifier_for
from ..privacy.outgoing import deid_variant
from ..privacy.pseudonym_map import record as record_pseudonyms
from ..privacy.reidentify import Return, reidentify, returning
from ..storage.index import Index
from ..storage.store import make_durable_dirs, write_dataset_atomically
from .job_engine import dispatch_for, queue_for
from .jobs import JobQueue, NewJob, job_key
from .outbox import Candidate, Outbox, forward_key
from .transcode import UNCOMPRESSED_VARIANTS

#: The outbox variant name of an instance forwarded as it was received.
ORIGINAL = "original"

log = logging.getLogger(__name__)


# -- what the rules see of a series ------------------------------------------------------------


@lru_cache(maxsize=4096)
def _header_at(path: str, mtime_ns: int, size: int) -> Dataset | None:
    """One instance's header (no pixel data), cached per file version (study rules look at the
    same series on every sweep while they wait); None, logged once, when it cannot be read."""
    try:
        return dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        log.warning("Routing: cannot read the header of %s (%s); rules see the index's attributes only", path, exc)
        return None


def read_rule_header(path: str | Path, fallback: Dataset) -> Dataset:
    """The header rules evaluate: the file's, over ``fallback`` (the index's attributes), so an
    unreadable file still matches on what the index knows."""
    header = Dataset()
    header.update(fallback)
    found = _header_at(str(path), *_file_version(str(path)))
    if found is not None:
        header.update(found)
    return header


def series_facts(db: sqlite3.Connection, series: sqlite3.Row | dict, peers: Sequence[Peer]) -> SeriesFacts:
    """The facts of an indexed series: a representative instance's header, the association, counts."""
    first = db.execute(
        "SELECT path, called_ae FROM instances WHERE series_uid = ? ORDER BY instance_number, sop_instance_uid LIMIT 1",
        (series["series_uid"],),
    ).fetchone()
    known = Dataset()
    for tag, vr, key in ((0x00080060, "CS", "modality"), (0x00180015, "CS", "body_part_examined"),
                         (0x0008103E, "LO", "series_description"), (0x0020000E, "UI", "series_uid"),
                         (0x0020000D, "UI", "study_uid")):
        if series[key]:  # as the sender wrote them, valid or not: rules compare, they do not judge
            known[tag] = DataElement(tag, vr, series[key], validation_mode=pydicom_config.IGNORE)
    header = read_rule_header(first["path"], known) if first is not None else known
    study = db.execute("SELECT count(*) AS n, count(DISTINCT series_uid) AS s FROM instances WHERE study_uid = ?",
                       (series["study_uid"],)).fetchone()
    instances = int(series["instance_count"])
    return SeriesFacts(header=header, calling_ae=str(series["calling_ae"]),
                       called_ae=str(first["called_ae"]) if first is not None else "",
                       source_peer=source_peer(str(series["calling_ae"]), peers),
                       instances=instances, slices=instances * _frames(header),
                       study_instances=int(study["n"]), study_series=int(study["s"]))


def source_peer(calling_ae: str, peers: Iterable[Peer]) -> str:
    return next((p.name for p in peers if p.ae_title == calling_ae and p.send), "")


def _frames(header: Dataset) -> int:
    try:
        return max(1, int(header.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


# -- evaluation in order -----------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """One rule's answer for one series: whether its conditions hold, and whether it acts."""

    route: Route
    verdict: Verdict
    acts: bool
    #: Why a rule whose conditions hold does not act ('' otherwise).
    note: str = ""


def evaluate_rules(routes: Sequence[Route], facts: SeriesFacts) -> list[Evaluation]:
    """Every rule's evaluation of ``facts``, in the order written: a stopping rule that acts ends
    the evaluation for the rules after it; fallback rules act only when no other rule acted."""
    results: dict[str, Evaluation] = {}
    acted, stopped_by = False, ""
    for route in [r for r in routes if not r.fallback] + [r for r in routes if r.fallback]:
        verdict = route.condition.evaluate(facts)
        note = ""
        if stopped_by:
            note = f"not reached: rule {stopped_by} matched and stops"
        elif route.fallback and acted:
            note = "fallback: another rule matched"
        acts = verdict.holds and not note
        if acts:
            acted = True
            stopped_by = route.name if route.stops else ""
        results[route.name] = Evaluation(route, verdict, acts, note if verdict.holds else "")
    return [results[r.name] for r in routes]


# -- actions -----------------------------------------------------------------------------------


def resolve_destinations(route: Route, calling_ae: str, peers: list[Peer], names_given: list[str] | None = None) -> list[str]:
    """Peer names for a route's destinations (or ``names_given``, e.g. its forward peers);
    ``sender`` is the peer with the calling AE title, when it may receive (otherwise it is
    dropped, with a warning)."""
    names: list[str] = []
    for name in route.destination_peers if names_given is None else names_given:
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


def _candidates(row: sqlite3.Row, profile: str | None) -> list[Candidate]:
    """A forwarded instance as stored, then uncompressed for a peer that does not take the stored
    syntax (transcode.py); each de-identified by ``profile`` when it is set (privacy/outgoing.py)."""
    encodings = [(ORIGINAL, row["transfer_syntax_uid"])] + [(v, str(ts)) for v, ts in UNCOMPRESSED_VARIANTS.items()]
    return [Candidate(deid_variant(profile, variant) if profile else variant, row["path"], row["sop_class_uid"], syntax,
                      row["sop_instance_uid"]) for variant, syntax in encodings]


def _forward(db: sqlite3.Connection, route: Route, peers: list[str], series: sqlite3.Row, config: NodeConfig,
             now: float) -> None:
    """Queue the instances received at this series version for each forward peer."""
    rows = db.execute(
        "SELECT sop_instance_uid, sop_class_uid, transfer_syntax_uid, path FROM instances "
        "WHERE series_uid = ? AND series_version = ? ORDER BY instance_number, sop_instance_uid",
        (series["series_uid"], series["version"]),
    ).fetchall()
    key = forward_key(route.name, series["series_uid"], series["version"])
    for peer in peers:
        profile = route.profile_for(peer, "forward")
        sending = rows if profile is None else _deidentified_rows(db, route, peer, profile, rows, series, config, now)
        for row in sending:
            Outbox.add(db, 0, key, row["sop_instance_uid"], peer, _candidates(row, profile), now)
        if sending:
            log.info("Series %s v%d -> route %s forwards %d instance(s) to %s%s", series["series_uid"], series["version"],
                     route.name, len(sending), peer, f" de-identified ({profile})" if profile else "")


def _deidentified_rows(db: sqlite3.Connection, route: Route, peer: str, profile: str, rows: list[sqlite3.Row],
                       series: sqlite3.Row, config: NodeConfig, now: float) -> list[sqlite3.Row]:
    """The rows that may go to ``peer`` under ``profile`` (instances that may carry burned-in
    identity are held back, logged), with the pseudonyms each will carry recorded, so that
    results coming back can be mapped to the originals (privacy/reidentify.py)."""
    try:
        engine = deidentifier(config, profile)
    except (ConfigError, ValueError) as exc:
        log.error("Series %s v%d: route %s cannot de-identify for %s (%s); not forwarded", series["series_uid"],
                  series["version"], route.name, peer, exc)
        return []
    sending, pairs = [], []
    for row in rows:
        header = _header_at(row["path"], *_file_version(row["path"]))
        if header is None:
            log.error("Instance %s: unreadable, not forwarded de-identified to %s", row["sop_instance_uid"], peer)
            continue
        header = copy.deepcopy(header)  # the engine changes values in place; the cached header stays as stored
        held = engine.check(header)
        if held is not None:
            log.warning("Instance %s of series %s held back from %s (profile %s): %s", row["sop_instance_uid"],
                        series["series_uid"], peer, profile, held.reason)
            continue
        original_patient = str(header.get("PatientID", "") or "")
        patient = engine.patient_pseudonym(header)
        report = engine.apply(header)
        pairs.extend((pseudonym, original, "uid") for original, pseudonym in report.uids.items())
        if patient:
            pairs.append((patient, original_patient, "patient"))
        sending.append(row)
    record_pseudonyms(db, pairs, series["study_uid"], route.name, peer, profile, now)
    return sending


def _file_version(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
        return stat.st_mtime_ns, stat.st_size
    except OSError:
        return -1, -1


_ENGINES: dict[tuple[str, str, int], Deidentifier] = {}


def deidentifier(config: NodeConfig, profile: str) -> Deidentifier:
    """The engine of ``profile``, made once per profile and key file version (it reads the key
    file; the next sweep after the key file changes reads it again)."""
    section = config.deidentification
    spec = section.profiles[profile].model_dump_json() if profile in section.profiles else ""
    key = (f"{profile}\0{spec}", str(section.key_file), _file_version(str(section.key_file))[0] if section.key_file else -1)
    if key not in _ENGINES:
        _ENGINES[key] = deidentifier_for(section, profile)
    return _ENGINES[key]


def _act(db: sqlite3.Connection, route: Route, series: sqlite3.Row, config: NodeConfig, now: float,
         once: bool = False) -> NewJob | None:
    """Do what ``route`` says with one series version: forward it, queue its analysis, or discard
    it. ``once``: skip a forward already queued for this series version (a study rule firing
    again for a re-opened study whose series did not change)."""
    if route.discard:
        log.info("Series %s v%d discarded by route %s: not analysed, not forwarded", series["series_uid"],
                 series["version"], route.name)
        return None
    if route.forward:
        key = forward_key(route.name, series["series_uid"], series["version"])
        peers = resolve_destinations(route, series["calling_ae"], config.peers, route.forward_peers)  # "sender": back to it
        if peers and not (once and db.execute("SELECT 1 FROM deliveries WHERE job_key = ? LIMIT 1", (key,)).fetchone()):
            _forward(db, route, peers, series, config, now)
    if not route.pipeline_names:
        return None
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
        queue=queue_for(config, route.pipeline_names),
    )
    return job if JobQueue.add(db, job, now, config.jobs.max_attempts, dispatch_for(config)) else None


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
        for series in rows:
            with log_context(study_uid=series["study_uid"], series_uid=series["series_uid"]):
                back = returning(db, series["study_uid"], series["calling_ae"], config.peers) if returns_possible else None
                if back is not None:
                    _route_returned(db, series, back, config, now)
                else:
                    queued.extend(_route_series(db, series, series_rules, config, now))
            db.execute("UPDATE series SET routed_version = ? WHERE series_uid = ?", (series["version"], series["series_uid"]))
        queued.extend(route_studies(db, config, now))
    for job in queued:
        log.info("Series %s v%d -> route %s, pipeline %s, results to %s", job.series_uid, job.series_version, job.route,
                 job.pipeline, ", ".join(job.destinations) or "nobody")
    return queued


def _route_series(db: sqlite3.Connection, series: sqlite3.Row, rules: list[Route], config: NodeConfig,
                  now: float) -> list[NewJob]:
    if not rules:
        return []
    facts = series_facts(db, series, config.peers)
    evaluations = evaluate_rules(rules, facts)
    acting = [e for e in evaluations if e.acts]
    if not acting:
        reasons = "; ".join(f"{e.route.name}: {e.verdict.reason}" for e in evaluations)
        log.info("Series %s v%d (%s, %d instance(s)) matched none of the rules, stored, not analysed (%s)",
                 series["series_uid"], series["version"], series["modality"] or "no modality", series["instance_count"],
                 reasons)
    jobs = []
    for evaluation in acting:
        job = _act(db, evaluation.route, series, config, now)
        if job is not None:
            jobs.append(job)
    return jobs


# -- results returning for a de-identified study ----------------------------------------------


def returned_key(route: str, series_uid: str, version: int) -> str:
    """The outbox group of a returned series mapped back: one association per destination."""
    return f"returned:{route}:{series_uid}:v{version}"


def _route_returned(db: sqlite3.Connection, series: sqlite3.Row, back: Return, config: NodeConfig, now: float) -> None:
    """A series answering a de-identified forward: each instance mapped to the original patient
    and study (privacy/reidentify.py), written under results.path/returned and queued for the
    route's plain destinations. The rules are not evaluated for it: it is the route's answer."""
    where = f"Series {series['series_uid']} v{series['version']} from {back.peer} (for study {back.original_study_uid})"
    route = next((r for r in config.routes if r.name == back.route), None)
    original = db.execute("SELECT path, calling_ae FROM instances WHERE study_uid = ? ORDER BY path LIMIT 1",
                          (back.original_study_uid,)).fetchone()
    source = _header_at(original["path"], *_file_version(original["path"])) if original is not None else None
    if route is None or source is None:
        log.error("%s: not mapped back and not delivered: %s", where,
                  f"route {back.route} is no longer configured" if route is None else "the original study is no longer stored")
        return
    destinations = resolve_destinations(route, original["calling_ae"], config.peers, route.plain_destinations)
    if not destinations:
        log.warning("%s: route %s has no plain destination for returning results; stored, not delivered", where, route.name)
        return
    folder = Path(config.results.path) / "returned" / hashlib.sha256(series["series_uid"].encode()).hexdigest()[:32] \
        / f"v{series['version']}"
    make_durable_dirs(folder)
    key = returned_key(route.name, series["series_uid"], series["version"])
    rows = db.execute("SELECT sop_instance_uid, path FROM instances WHERE series_uid = ? AND series_version = ? "
                      "ORDER BY instance_number, sop_instance_uid", (series["series_uid"], series["version"])).fetchall()
    mapped = 0
    for number, row in enumerate(rows):
        try:
            ds = dcmread(row["path"])
        except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
            log.error("%s: instance %s unreadable (%s); not delivered", where, row["sop_instance_uid"], exc)
            continue
        mapped += reidentify(ds, db, source)
        path = folder / f"{number:05d}.dcm"
        write_dataset_atomically(ds, path)
        candidate = Candidate(ORIGINAL, str(path), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID),
                              str(ds.SOPInstanceUID))
        for peer in destinations:
            Outbox.add(db, 0, key, str(ds.SOPInstanceUID), peer, [candidate], now)
    log.info("%s: %d instance(s) mapped back to the original patient and study (%d UID values), to %s", where, len(rows),
             mapped, ", ".join(destinations))


# -- study rules -------------------------------------------------------------------------------


def route_studies(db: sqlite3.Connection, config: NodeConfig, now: float) -> list[NewJob]:
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
        decided = {r["route"]: r["outcome"] for r in db.execute(
            "SELECT route, outcome FROM study_routes WHERE study_uid = ? AND version = ?", (study["study_uid"], study["version"]))}
        series_rows = db.execute("SELECT * FROM series WHERE study_uid = ? ORDER BY series_number, series_uid",
                                 (study["study_uid"],)).fetchall()
        complete = [s for s in series_rows if s["state"] == "complete"]
        known: list[tuple[sqlite3.Row, SeriesFacts]] = []

        def facts() -> list[tuple[sqlite3.Row, SeriesFacts]]:
            """The complete series' facts, read only when a rule needs them (most sweeps: none)."""
            if not known:
                known.extend((row, series_facts(db, row, config.peers)) for row in complete)
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
                            job = _act(db, rule, row, config, now, once=True)
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


def _study_ready(rule: Route, study: sqlite3.Row, facts: Callable[[], list[SeriesFacts]], all_complete: bool,
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


