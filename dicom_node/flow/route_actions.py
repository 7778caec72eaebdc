"""What a rule that fires does, in the routing transaction: a job for its pipelines, its
``forward`` peers' instances through the outbox (unchanged, or de-identified with the named
profile), and results a de-identified peer sends back mapped to the original patient and study
and sent on to the route's destinations.

At series version 1 every instance is forwarded, at a later version only those that arrived
(new or changed) since the one before. A peer that does not accept the stored transfer syntax
gets them decompressed (transcode.py)."""

from __future__ import annotations

import copy
import hashlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from ..config import NodeConfig, Route
from ..errors import ConfigError
from ..privacy.deidentify import Deidentifier, deidentifier_for
from ..privacy.outgoing import deid_variant
from ..privacy.pseudonym_map import record as record_pseudonyms
from ..privacy.reidentify import Return, reidentify
from ..storage.events import emit
from ..storage.header import file_version, header_at
from ..storage.store import make_durable_dirs, write_dataset_atomically
from .job_engine import dispatch_for, queue_for
from .jobs import JobQueue, NewJob, job_key
from .outbox import Candidate, Outbox, forward_key
from .rule_evaluation import resolve_destinations
from .transcode import UNCOMPRESSED_VARIANTS

#: The outbox variant name of an instance forwarded as it was received.
ORIGINAL = "original"

log = logging.getLogger(__name__)


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
        header = header_at(row["path"])
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


_ENGINES: dict[tuple[str, str, int], Deidentifier] = {}


def deidentifier(config: NodeConfig, profile: str) -> Deidentifier:
    """The engine of ``profile``, made once per profile and key file version (it reads the key
    file; the next sweep after the key file changes reads it again)."""
    section = config.deidentification
    spec = section.profiles[profile].model_dump_json() if profile in section.profiles else ""
    key = (f"{profile}\0{spec}", str(section.key_file), file_version(section.key_file)[0] if section.key_file else -1)
    if key not in _ENGINES:
        _ENGINES[key] = deidentifier_for(section, profile)
    return _ENGINES[key]


def act(db: sqlite3.Connection, route: Route, series: sqlite3.Row, config: NodeConfig, now: float,
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


def returned_key(route: str, series_uid: str, version: int) -> str:
    """The outbox group of a returned series mapped back: one association per destination."""
    return f"returned:{route}:{series_uid}:v{version}"


def route_returned(db: sqlite3.Connection, series: sqlite3.Row, back: Return, config: NodeConfig, now: float) -> None:
    """A series answering a de-identified forward: each instance mapped to the original patient
    and study (privacy/reidentify.py), written under results.path/returned and queued for the
    route's plain destinations. The rules are not evaluated for it: it is the route's answer."""
    where = f"Series {series['series_uid']} v{series['version']} from {back.peer} (for study {back.original_study_uid})"
    route = next((r for r in config.routes if r.name == back.route), None)
    original = db.execute("SELECT path, calling_ae FROM instances WHERE study_uid = ? ORDER BY path LIMIT 1",
                          (back.original_study_uid,)).fetchone()
    source = header_at(original["path"]) if original is not None else None
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
    objects: list[dict[str, str]] = []
    structures: list[dict[str, Any]] = []
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
        objects.append({"sop_class_uid": str(ds.SOPClassUID), "sop_instance_uid": str(ds.SOPInstanceUID),
                        "modality": str(ds.get("Modality", ""))})
        structures += [{"value": int(s.SegmentNumber), "name": str(s.get("SegmentLabel", ""))}
                       for s in ds.get("SegmentSequence", [])]
    sr = next((o["sop_instance_uid"] for o in objects if o["modality"] == "SR"), "")
    emit(db, "results.returned", study_uid=back.original_study_uid, series_uid=series["series_uid"], now=now,
         payload={"route": route.name, "peer": back.peer, "job_key": key, "objects": objects, "structures": structures,
                  "destinations": destinations, **({"sr_sop_instance_uid": sr} if sr else {})})
    log.info("%s: %d instance(s) mapped back to the original patient and study (%d UID values), to %s", where, len(rows),
             mapped, ", ".join(destinations))
