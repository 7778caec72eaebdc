"""What the routing rules see of a series (its header, read once per file version, over the
index's attributes; the association; counts) and the rules evaluated in the order written:
``on_match: stop`` (or ``discard``) ends the evaluation, ``continue`` lets later rules act too,
and a ``fallback`` rule acts only when no other rule of its trigger matched."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from ..config import Peer, Route
from ..config.rules import RuleFacts, Verdict
from ..storage.header import header_at

log = logging.getLogger(__name__)


def read_rule_header(path: str | Path, fallback: Dataset) -> Dataset:
    """The header rules evaluate: the file's, over ``fallback`` (the index's attributes), so an
    unreadable file still matches on what the index knows."""
    header = Dataset()
    header.update(fallback)
    found = header_at(path)
    if found is not None:
        header.update(found)
    return header


def rule_facts(db: sqlite3.Connection, series: sqlite3.Row | dict, peers: Sequence[Peer]) -> RuleFacts:
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
    return RuleFacts(header=header, calling_ae=str(series["calling_ae"]),
                       called_ae=str(first["called_ae"]) if first is not None else "",
                       source_peer=source_peer(str(series["calling_ae"]), peers),
                       instances=instances, slices=instances * frames_of(header),
                       study_instances=int(study["n"]), study_series=int(study["s"]))


def source_peer(calling_ae: str, peers: Iterable[Peer]) -> str:
    return next((p.name for p in peers if p.ae_title == calling_ae and (p.send or p.stow or p.query)), "")


def frames_of(header: Dataset) -> int:
    try:
        return max(1, int(header.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


@dataclass(frozen=True)
class Evaluation:
    """One rule's answer for one series: whether its conditions hold, and whether it acts."""

    route: Route
    verdict: Verdict
    acts: bool
    #: Why a rule whose conditions hold does not act ('' otherwise).
    note: str = ""


def evaluate_rules(routes: Sequence[Route], facts: RuleFacts) -> list[Evaluation]:
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
