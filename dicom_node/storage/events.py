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
    process.died        process (analysis worker, listener), pid, exitcode, replaced_by
    security.alert      alert (association_rejected, tls_refused, login_failed, stow_refused), address,
                        reason: at most one per alert and address every 10 minutes (a scan is one event)
    disk.low            path, free_mb, min_free_mb: an instance refused for space, at most one every 10 minutes
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
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


log = logging.getLogger(__name__)
#: Alerts raised from busy paths (a refused association, a full disk) are recorded at most once
#: per kind and key every ALERT_EVERY_SECONDS in each process: a port scan is one event, not ten
#: thousand.
ALERT_EVERY_SECONDS = 600.0
_last_alert: dict[tuple[str, str], float] = {}
_alert_lock = threading.Lock()


def emit_alert(index: Any, event_type: str, key: str, payload: dict[str, Any], now: float | None = None) -> bool:
    """Record a ``security.alert`` or ``disk.low`` event in a transaction of its own, unless one
    with the same ``key`` was recorded less than ALERT_EVERY_SECONDS ago; never raises (an alert
    must not turn a refusal into a crash). True when recorded."""
    now = time.time() if now is None else now
    with _alert_lock:
        if now - _last_alert.get((event_type, key), -ALERT_EVERY_SECONDS) < ALERT_EVERY_SECONDS:
            return False
        _last_alert[(event_type, key)] = now
    try:
        with index.transaction() as db:
            emit(db, event_type, payload=payload, now=now)
    except Exception as exc:  # noqa: BLE001 - the index may be the very thing that is failing
        log.warning("The %s event (%s) could not be recorded: %s", event_type, key, exc)
        return False
    return True
