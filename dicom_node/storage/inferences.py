"""The record of every inference (post-market monitoring): one ``inferences`` row per pipeline a
job held a series against, written in the transaction that ends the job (so a record exists for
exactly the outcomes the index shows), with what a governance board asks of each use of a model:
which model, version and weights (its Device UID), the gate's decision and distance, per-structure
confidence and volume, findings, timings, and the scanner the series came from.

Delivery is not copied here: it is read from ``deliveries`` when records are shown
(dicom_node/monitoring/records.py), so a later delivery or dead letter is seen as it happens."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

#: What became of the series under one pipeline.
OUTCOMES = ("analysed", "declined", "failed", "shadow")


@dataclass(frozen=True)
class Scanner:
    """Where a series came from, from its first instance's General Equipment and Series modules."""

    manufacturer: str = ""
    model: str = ""
    station: str = ""
    series_description: str = ""
    protocol: str = ""

    @classmethod
    def of(cls, ds: Any) -> Scanner:
        def text(keyword: str) -> str:
            value = ds.get(keyword) if ds is not None else None
            return "" if value is None else str(value).strip()[:128]

        return cls(text("Manufacturer"), text("ManufacturerModelName"), text("StationName"), text("SeriesDescription"),
                   text("ProtocolName"))

    @property
    def label(self) -> str:
        """How drift groups scanners: manufacturer and model ("unknown scanner" when neither is set)."""
        return " ".join(part for part in (self.manufacturer, self.model) if part) or "unknown scanner"


@dataclass(frozen=True)
class Inference:
    """One row, as the worker hands it over."""

    job_id: int | None
    job_key: str
    route: str
    pipeline: str
    model: str
    model_version: str
    device_uid: str
    study_uid: str
    series_uid: str
    outcome: str
    gate_applicable: bool
    gate_distance: float | None
    scanner: Scanner
    mean_confidence: float | None = None
    details: dict[str, Any] | None = None


def record(db: sqlite3.Connection, inference: Inference, now: float) -> None:
    """Insert one record in the caller's transaction."""
    if inference.outcome not in OUTCOMES:
        raise ValueError(f"unknown inference outcome {inference.outcome!r}")
    s = inference.scanner
    db.execute(
        "INSERT INTO inferences(created_at, job_id, job_key, route, pipeline, model, model_version, device_uid, study_uid, "
        "series_uid, outcome, gate_applicable, gate_distance, manufacturer, scanner_model, station, series_description, "
        "protocol, mean_confidence, details) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (now, inference.job_id, inference.job_key, inference.route, inference.pipeline, inference.model, inference.model_version,
         inference.device_uid, inference.study_uid, inference.series_uid, inference.outcome, int(inference.gate_applicable),
         inference.gate_distance, s.manufacturer, s.model, s.station, s.series_description, s.protocol,
         inference.mean_confidence, json.dumps(inference.details or {}, default=str)),
    )
