"""Drift of a model in use, per model version and scanner: the gate's acceptance rate, the
distribution of its distances from the training data and of the structures' confidence, in the
recent window against a reference window (the version's first days in use on that scanner).

A shift beyond the configured bounds (``monitoring:``) is drift: a ``model.drift`` event (once
per ``renotify_hours`` while it lasts), Prometheus gauges (``dicom_node_model_*``), the dashboard's
monitoring page. A scanner upgrade, a new protocol, another patient population all show here
before anyone notices the results got worse."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..config import MonitoringSection
from ..storage.events import emit
from ..storage.index import Index
from .records import scanner_label

log = logging.getLogger(__name__)
DAY = 86400.0


@dataclass(frozen=True)
class WindowStats:
    """One window's records of one model version on one scanner (gate decisions: analysed or declined)."""

    start: float
    end: float
    count: int
    acceptance_rate: float | None
    distance_median: float | None
    distance_p90: float | None
    confidence_mean: float | None
    distances: tuple[float, ...] = ()
    confidences: tuple[float, ...] = ()


@dataclass(frozen=True)
class Drift:
    model: str
    model_version: str
    scanner: str
    reference: WindowStats
    recent: WindowStats
    shifts: dict[str, float] = field(default_factory=dict)  # measure -> how far it moved (positive: worse)
    reasons: tuple[str, ...] = ()  # the bounds crossed ("": none)
    judged: bool = False  # both windows held min_records

    @property
    def key(self) -> str:
        return f"{self.model} {self.model_version} on {self.scanner}"

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        for window in ("reference", "recent"):
            out[window].pop("distances")
            out[window].pop("confidences")
        return out


def _stats(rows: list[dict[str, Any]], start: float, end: float) -> WindowStats:
    gated = [r for r in rows if r["outcome"] in ("analysed", "declined")]
    distances = tuple(float(r["gate_distance"]) for r in gated if r["gate_distance"] is not None)
    confidences = tuple(float(r["mean_confidence"]) for r in gated if r["mean_confidence"] is not None)
    accepted = sum(1 for r in gated if r["outcome"] == "analysed")
    return WindowStats(
        start, end, len(gated), accepted / len(gated) if gated else None,
        float(np.median(distances)) if distances else None, float(np.percentile(distances, 90)) if distances else None,
        float(np.mean(confidences)) if confidences else None, distances, confidences)


def measure(index: Index, section: MonitoringSection, now: float | None = None) -> list[Drift]:
    """Every model version and scanner with records: its two windows and what moved."""
    now = time.time() if now is None else now
    rows = [dict(r) for r in index.query(
        "SELECT model, model_version, manufacturer, scanner_model, outcome, gate_distance, mean_confidence, created_at "
        "FROM inferences WHERE model != '' ORDER BY created_at")]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["model_version"], scanner_label(row)), []).append(row)
    out = []
    for (model, version, scanner), records in sorted(groups.items()):
        first = float(records[0]["created_at"])
        ref_end = first + section.reference_days * DAY
        recent_start = max(ref_end, now - section.window_days * DAY)
        reference = _stats([r for r in records if r["created_at"] < ref_end], first, ref_end)
        recent = _stats([r for r in records if r["created_at"] >= recent_start], recent_start, now)
        judged = reference.count >= section.min_records and recent.count >= section.min_records
        shifts: dict[str, float] = {}
        reasons: list[str] = []
        if reference.acceptance_rate is not None and recent.acceptance_rate is not None:
            shifts["acceptance_drop"] = reference.acceptance_rate - recent.acceptance_rate
        if reference.distance_median is not None and recent.distance_median is not None:
            shifts["distance_shift"] = recent.distance_median - reference.distance_median
        if reference.confidence_mean is not None and recent.confidence_mean is not None:
            shifts["confidence_drop"] = reference.confidence_mean - recent.confidence_mean
        if judged:
            for name, bound, text in (("acceptance_drop", section.max_acceptance_drop, "gate acceptance fell by {:.0%}"),
                                      ("distance_shift", section.max_distance_shift, "median gate distance rose by {:.2f} spreads"),
                                      ("confidence_drop", section.max_confidence_drop, "mean confidence fell by {:.3f}")):
                if shifts.get(name, 0.0) > bound:
                    reasons.append(text.format(shifts[name]) + f" (bound {bound:g})")
        out.append(Drift(model, version, scanner, reference, recent, shifts, tuple(reasons), judged))
    return out


def check(index: Index, section: MonitoringSection, now: float | None = None) -> list[Drift]:
    """Measure, export the gauges, and record a ``model.drift`` event for each drift not already
    announced within ``renotify_hours``. Returns what drifted."""
    from .. import counters

    now = time.time() if now is None else now
    drifts = measure(index, section, now)
    for drift in drifts:
        labels = (drift.model, drift.model_version, drift.scanner)
        for name, value in drift.shifts.items():
            counters.MODEL_DRIFT.labels(*labels, name).set(value)
        if drift.recent.acceptance_rate is not None:
            counters.MODEL_ACCEPTANCE.labels(*labels).set(drift.recent.acceptance_rate)
    drifted = [d for d in drifts if d.reasons]
    if not drifted:
        return []
    recent = {json.loads(r["payload"] or "{}").get("key") for r in index.query(
        "SELECT payload FROM events WHERE type = 'model.drift' AND created_at >= ?", (now - section.renotify_hours * 3600,))}
    with index.transaction() as db:
        for drift in drifted:
            if drift.key in recent:
                continue
            log.warning("Model drift: %s: %s", drift.key, "; ".join(drift.reasons))
            emit(db, "model.drift", now=now, payload={"key": drift.key, "model": drift.model, "model_version": drift.model_version,
                                                      "scanner": drift.scanner, "reasons": list(drift.reasons),
                                                      "shifts": {k: round(v, 4) for k, v in drift.shifts.items()}})
    return drifted
