"""Reading the inference records (storage/inferences.py): filtered, with each job's delivery
state read from the outbox as it is now, and exported as CSV or Parquet for a governance board's
own tools."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..storage.index import Index
from ..storage.inferences import Scanner

#: The flat columns of an export (details stay JSON in its last column).
COLUMNS = ("id", "created_at", "job_id", "route", "pipeline", "model", "model_version", "device_uid", "study_uid",
           "series_uid", "outcome", "delivery", "gate_applicable", "gate_distance", "mean_confidence", "manufacturer",
           "scanner_model", "station", "series_description", "protocol", "details")


@dataclass(frozen=True)
class RecordFilter:
    model: str | None = None
    scanner: str | None = None  # manufacturer and model, as Scanner.label
    outcome: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 1000


def _delivery_states(index: Index, job_ids: Sequence[int]) -> dict[int, str]:
    """Per job: "delivered" (every result delivered), "dead", "pending", or "none" (no result)."""
    if not job_ids:
        return {}
    marks = ",".join("?" for _ in job_ids)
    states: dict[int, set[str]] = {}
    for row in index.query(f"SELECT job_id, state FROM deliveries WHERE job_id IN ({marks})", tuple(job_ids)):
        states.setdefault(int(row["job_id"]), set()).add(str(row["state"]))
    out = {}
    for job in job_ids:
        seen = states.get(job, set())
        out[job] = "none" if not seen else "dead" if "dead" in seen else "delivered" if seen == {"delivered"} else "pending"
    return out


def query(index: Index, where: RecordFilter) -> list[dict[str, Any]]:
    """Records, newest first, as dicts with ``delivery`` and parsed ``details``."""
    clauses, params = [], []
    for column, value in (("model", where.model), ("outcome", where.outcome)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if where.since is not None:
        clauses.append("created_at >= ?")
        params.append(where.since)
    if where.until is not None:
        clauses.append("created_at < ?")
        params.append(where.until)
    sql = "SELECT * FROM inferences" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY id DESC LIMIT ?"
    rows = [dict(r) for r in index.query(sql, (*params, max(1, min(where.limit, 100000))))]
    if where.scanner:
        rows = [r for r in rows if scanner_label(r) == where.scanner]
    states = _delivery_states(index, sorted({int(r["job_id"]) for r in rows if r["job_id"] is not None}))
    for row in rows:
        row["details"] = json.loads(row["details"] or "{}")
        row["gate_applicable"] = bool(row["gate_applicable"])
        row["delivery"] = states.get(row["job_id"], "none") if row["outcome"] == "analysed" else "-"
        row["scanner"] = scanner_label(row)
    return rows


def scanner_label(row: dict[str, Any]) -> str:
    """A record's scanner as drift groups it (storage.inferences.Scanner.label)."""
    return Scanner(str(row.get("manufacturer") or ""), str(row.get("scanner_model") or "")).label


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([json.dumps(row[c], default=str) if c == "details" else row.get(c) for c in COLUMNS])
    return out.getvalue()


def to_parquet(rows: list[dict[str, Any]]) -> bytes:
    """Parquet (pyarrow, the ``monitoring`` extra); ImportError names the extra when it is missing."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("Parquet export needs pyarrow: pip install 'dicom-node[monitoring]'") from exc
    table = pa.table({c: [json.dumps(r[c], default=str) if c == "details" else r.get(c) for r in rows] for c in COLUMNS})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
