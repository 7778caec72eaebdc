"""The notifier: events (storage/events.py) fanned out to the subscriptions that want them, and
each notification delivered to its target with retries, like the outbox's deliveries.

Fan-out reads the events not yet fanned out, in order, and in one transaction per event writes
one ``notifications`` row per (subscription, target) whose ``on`` has its type and whose ``when``
holds for its series, and marks the event fanned out: a crash before the commit fans it out
again, after it, never twice (rows are unique per event, subscription and target). Delivery:

    pending --sent--> delivered
       |  failure: again after retry_base * 2^attempts (capped); permanent (a 4xx, an AE/AR ACK),
       +--> or still failing give_up_after_seconds after queueing --> dead (retry from the API)

A target that is down or slow holds up only its own notifications (each pass sends what is due,
each with its timeout; the node's other work runs in other threads and processes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import EmailTarget, Hl7Target, NodeConfig, WebhookTarget
from ..config.notifications import ORU_EVENTS
from ..config.rules import RuleFacts
from ..errors import IndexError_, NotificationError
from ..flow.rule_evaluation import rule_facts
from ..periodic import PeriodicTask
from ..storage.index import Index
from .context import event_context
from .hl7_oru import send_oru
from .mail import send_email
from .webhook import send_webhook

log = logging.getLogger(__name__)


def _facts(db: Any, series_uid: str, config: NodeConfig) -> RuleFacts | None:
    if not series_uid:
        return None
    row = db.execute("SELECT * FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
    return rule_facts(db, row, config.peers) if row is not None else None


def fan_out(index: Index, config: NodeConfig, now: float, limit: int = 500) -> int:
    """Turn new events into notification rows; return how many rows were made."""
    subscriptions = config.notifications.subscriptions
    made = 0
    for event in index.query("SELECT * FROM events WHERE fanned_out = 0 ORDER BY id LIMIT ?", (limit,)):
        with index.transaction() as db:
            facts: Any = None
            for number, subscription in enumerate(subscriptions):
                if event["type"] not in subscription.on:
                    continue
                if subscription.condition is not None:
                    facts = facts if facts is not None else (_facts(db, event["series_uid"], config) or False)
                    if facts is False or not subscription.condition.evaluate(facts).holds:
                        continue
                for target in subscription.to:
                    cursor = db.execute(
                        "INSERT INTO notifications(event_id, subscription, target, state, next_attempt_at, queued_at) "
                        "VALUES(?, ?, ?, 'pending', ?, ?) ON CONFLICT(event_id, subscription, target) DO NOTHING",
                        (event["id"], number, target, now, now))
                    made += cursor.rowcount
            db.execute("UPDATE events SET fanned_out = 1 WHERE id = ?", (event["id"],))
    return made


class Notifier:
    """Fan out and deliver, every ``notifications.interval_seconds`` while ``active()`` says this
    process is the one that sends (the sender lock: one notifier per index)."""

    def __init__(self, config: NodeConfig, index: Index, active: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.time) -> None:
        self.config, self.index, self.active, self.clock = config, index, active, clock
        self.section = config.notifications
        self._task = PeriodicTask("notifier", self.run_once, self.section.interval_seconds)

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stop()

    def run_once(self) -> int:
        """One pass: fan out, then send what is due; return how many were delivered."""
        if not self.active():
            return 0
        now = self.clock()
        try:
            fan_out(self.index, self.config, now)
            due = self.index.query("SELECT n.*, e.type, e.created_at AS event_at FROM notifications n "
                                   "JOIN events e ON e.id = n.event_id WHERE n.state = 'pending' AND n.next_attempt_at <= ? "
                                   "ORDER BY n.next_attempt_at, n.id LIMIT 200", (now,))
        except IndexError_ as exc:
            log.error("Notifications: the index failed, will try again: %s", exc)
            return 0
        return sum(self._send(row) for row in due)

    def _send(self, row: Any) -> bool:
        subscription = self.section.subscriptions[row["subscription"]] \
            if row["subscription"] < len(self.section.subscriptions) else None
        target = self.section.targets.get(row["target"])
        try:
            if target is None or subscription is None:
                raise NotificationError(f"target {row['target']} or its subscription is no longer configured", permanent=True)
            event = self.index.query("SELECT * FROM events WHERE id = ?", (row["event_id"],))[0]
            if isinstance(target, Hl7Target):
                if event["type"] not in ORU_EVENTS:
                    raise NotificationError(f"an ORU^R01 reports a finished analysis ({', '.join(ORU_EVENTS)}) only",
                                            permanent=True)
                context = event_context(self.index, event, self.config.node.ae_title, include_patient_name=True)
                detail = send_oru(target, context, self.index)
            else:
                context = event_context(self.index, event, self.config.node.ae_title, subscription.include_patient_name)
                if isinstance(target, WebhookTarget):
                    send_webhook(target, context, int(row["id"]))
                else:
                    assert isinstance(target, EmailTarget)
                    send_email(target, context)
                detail = ""
        except NotificationError as exc:
            self._failed(row, str(exc), exc.permanent)
            return False
        except Exception as exc:  # noqa: BLE001 - a template or message error fails this one, not the notifier
            log.exception("Notification %d to %s could not be made", row["id"], row["target"])
            self._failed(row, f"{type(exc).__name__}: {exc}", permanent=True)
            return False
        now = self.clock()
        with self.index.transaction() as db:
            db.execute("UPDATE notifications SET state = 'delivered', attempts = attempts + 1, delivered_at = ?, "
                       "last_error = '' WHERE id = ?", (now, row["id"]))
        log.info("Notification %d (%s, event %d) delivered to %s %.2f s after its event%s", row["id"], row["type"],
                 row["event_id"], row["target"], now - float(row["event_at"]), f" ({detail})" if detail else "")
        return True

    def _failed(self, row: Any, error: str, permanent: bool) -> None:
        now = self.clock()
        attempts = int(row["attempts"]) + 1
        dead = permanent or now - float(row["queued_at"]) >= self.section.give_up_after_seconds
        delay = min(self.section.retry_max_seconds, self.section.retry_base_seconds * 2 ** (attempts - 1))
        with self.index.transaction() as db:
            db.execute("UPDATE notifications SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                       ("dead" if dead else "pending", attempts, now + delay, error[:2000], row["id"]))
        log.warning("Notification %d (%s) to %s failed, attempt %d, %s: %s", row["id"], row["type"], row["target"],
                    attempts, "dead" if dead else f"again in {delay:.0f} s", error)


def retry_notification(index: Index, notification_id: int, now: float) -> bool:
    """Queue a dead (or pending) notification again, now."""
    with index.transaction() as db:
        cursor = db.execute("UPDATE notifications SET state = 'pending', attempts = 0, next_attempt_at = ?, queued_at = ? "
                            "WHERE id = ? AND state IN ('dead', 'pending')", (now, now, notification_id))
    return cursor.rowcount == 1


def recent(index: Index, limit: int = 100) -> dict[str, Any]:
    """Recent events and notifications, for the API and the dashboard."""
    events = [{**dict(r), "payload": json.loads(r["payload"] or "{}")}
              for r in index.query("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))]
    notes = [dict(r) for r in index.query("SELECT n.*, e.type FROM notifications n JOIN events e ON e.id = n.event_id "
                                          "ORDER BY n.id DESC LIMIT ?", (limit,))]
    return {"events": events, "notifications": notes}
