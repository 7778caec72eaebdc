"""The node's event stream: what happened, recorded in the index by the transaction that made
it happen (a job marked done and its ``job.done`` commit together), so a crash between the two
cannot lose an event or invent one. dicom_node/notify/ reads the stream and tells the
subscribed webhooks, mailboxes and RIS; the API lists it.

Event types and what their payload holds (README, "Notifications"):

    study.complete      study, version, series (count), instances, calling_ae
    job.done            job, route, pipeline, model, structures, measurements, findings, scores
    job.not_applicable  job, route, reasons
    job.failed          job, route, error, attempt, retried (true) / job.dead: the same, for good
    delivery.dead       delivery, peer, object, job_key, error
    results.returned    route, peer, job_key, objects, structures, sr_sop_instance_uid: what an external
                        AI sent back for a de-identified study, mapped to the original (its event
                        names the original study)
    process.died        process (analysis worker), pid, exitcode, replaced_by
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ..config.notifications import EVENT_TYPES


def emit(db: sqlite3.Connection, event_type: str, *, study_uid: str = "", series_uid: str = "", job_id: int | None = None,
         payload: dict[str, Any] | None = None, now: float | None = None) -> None:
    """Record one event in the caller's transaction."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    db.execute("INSERT INTO events(type, created_at, study_uid, series_uid, job_id, payload) VALUES(?, ?, ?, ?, ?, ?)",
               (event_type, time.time() if now is None else now, study_uid, series_uid, job_id,
                json.dumps(payload or {}, default=str)))
