"""The sender: delivers due outbox rows by C-STORE, one association per job and peer (or by
STOW-RS to a DICOMweb peer: delivery_dicomweb.py).

For each (job, peer) group it proposes a presentation context for every candidate encoding,
then takes the first variant (in the group's preference order) whose every object the peer
accepted, and sends those files unchanged. Success (or a warning status) marks a row
delivered; anything else -- peer down, association rejected, context refused, a failure status
-- is a failed attempt that the outbox retries with backoff, logged with the reason.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE

from .. import counters
from ..config import NodeConfig, Peer, is_postgres_url
from ..errors import ConfigError, DeidentificationError, IndexError_, PeerError, TranscodeError
from ..logs import log_context
from ..net.patches.pynetdicom_settings import configure_sender
from ..net.scu import associate
from ..net.tls import client_context
from ..periodic import PeriodicTask
from ..privacy.deidentify import Deidentifier, deidentifier_for
from ..privacy.outgoing import deidentified, split_variant
from ..storage.audit import AuditLog
from .delivery_dicomweb import send_group_by_stow
from .outbox import Candidate, Delivery, Outbox, RetryPolicy, is_forward
from .transcode import UNCOMPRESSED_VARIANTS, for_sending

log = logging.getLogger(__name__)

_SUCCESS = {0x0000, 0xB000, 0xB006, 0xB007}


def _choose_variant(group: list[Delivery], accepted: set[tuple[str, str]]) -> dict[int, Candidate] | None:
    """For each delivery of the group, the candidate of the first variant accepted for all."""
    variants = [c.variant for c in group[0].candidates]
    for variant in variants:
        chosen: dict[int, Candidate] = {}
        for delivery in group:
            candidate = next((c for c in delivery.candidates if c.variant == variant), None)
            if candidate is None or (candidate.sop_class_uid, candidate.transfer_syntax_uid) not in accepted:
                break
            chosen[delivery.id] = candidate
        else:
            return chosen
    return None


class Sender:
    def __init__(self, config: NodeConfig, outbox: Outbox, audit: AuditLog | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.outbox = outbox
        self.audit = audit
        self.clock = clock
        delivery = config.delivery
        self.policy = RetryPolicy(delivery.retry_base_seconds, delivery.retry_max_seconds, delivery.give_up_after_seconds)
        #: The client side of TLS for peers with tls: true (the node's certificate, its CA).
        self.tls = client_context(config.node.tls) if config.node.tls is not None else None
        self._deidentifiers: dict[str, Deidentifier] = {}

    def run_once(self) -> int:
        """Send every due delivery; return how many were delivered."""
        try:
            due = self.outbox.due(self.clock())
        except IndexError_ as exc:
            log.error("Outbox read failed, will try again: %s", exc)
            return 0
        delivered = 0
        due.sort(key=lambda d: (d.peer, d.job_key, d.object))
        for (peer_name, job_key), items in groupby(due, key=lambda d: (d.peer, d.job_key)):
            with log_context(peer=peer_name, job_key=job_key):
                delivered += self._send_group(peer_name, list(items))
        return delivered

    def fail(self, group: list[Delivery], reason: str, permanent: bool = False) -> None:
        now = self.clock()
        for delivery in group:
            state = self.outbox.failed(delivery, reason, now, self.policy, permanent)
            counters.DELIVERY_FAILURES.labels(delivery.peer).inc()
            log.warning("Delivery %d (%s of %s) to %s failed, attempt %d, %s: %s", delivery.id, delivery.object,
                        delivery.job_key, delivery.peer, delivery.attempts + 1,
                        "dead-lettered" if state.value == "dead" else f"retry in {self.policy.delay(delivery.attempts + 1):.0f} s",
                        reason)

    def _study_of(self, delivery: Delivery) -> str:
        """The Study Instance UID a delivery belongs to (for the audit record's Export message)."""
        try:
            if delivery.job_id:
                rows = self.outbox.index.query("SELECT study_uid FROM jobs WHERE id = ?", (delivery.job_id,))
            else:  # a forward: forward:<route>:<series>:v<n>; results mapped back: returned:<route>:<series>:v<n>
                rows = self.outbox.index.query("SELECT study_uid FROM series WHERE series_uid = ?",
                                               (delivery.job_key.split(":")[2],))
                if rows and delivery.job_key.startswith("returned:"):  # stored under its pseudonym: the original
                    rows = self.outbox.index.query("SELECT original AS study_uid FROM pseudonyms WHERE pseudonym = ? "
                                                   "LIMIT 1", (rows[0]["study_uid"],)) or rows
        except (IndexError_, IndexError):
            return ""
        return str(rows[0]["study_uid"]) if rows else ""

    def payload(self, candidate: Candidate) -> str | Dataset:
        """What goes out for ``candidate``: the stored file, decompressed for an uncompressed
        variant (transcode.py), de-identified for a ``deid:`` variant (privacy/outgoing.py)."""
        profile, encoding = split_variant(candidate.variant)
        payload: str | Dataset = for_sending(candidate.path, candidate.transfer_syntax_uid) \
            if encoding in UNCOMPRESSED_VARIANTS else candidate.path
        if profile is None:
            return payload
        if profile not in self._deidentifiers:
            self._deidentifiers[profile] = deidentifier_for(self.config.deidentification, profile)
        return deidentified(payload, self._deidentifiers[profile])

    def mark_delivered(self, delivery: Delivery, candidate: Candidate, peer: Peer, status: int) -> None:
        """Mark one delivery done, count it, log it, and audit it as an Export."""
        self.outbox.delivered(delivery.id, candidate.variant, self.clock())
        counters.DELIVERIES.labels(peer.name).inc()
        log.info("Delivered %s of %s to %s (%s, %s)", delivery.object, delivery.job_key, peer.name,
                 candidate.variant, candidate.sop_instance_uid)
        if self.audit is not None:
            event = "forwarded" if is_forward(delivery.job_key) else "result_sent"
            self.audit.write(event, peer=peer.name, ae_title=peer.ae_title, host=peer.host or peer.address,
                             object=delivery.object, job=delivery.job_key, sop_instance_uid=candidate.sop_instance_uid,
                             variant=candidate.variant, status=status, study_uid=self._study_of(delivery))

    def _send_group(self, peer_name: str, group: list[Delivery]) -> int:
        try:
            peer = self.config.peer(peer_name)
        except ConfigError as exc:  # a peer removed from the config: say so on the row
            self.fail(group, str(exc))
            return 0
        if peer.delivers_by_dicomweb:
            return send_group_by_stow(self, peer, group)
        ae = AE(ae_title=self.config.node.ae_title)
        timeout = self.config.delivery.timeout_seconds
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        pairs = sorted({(c.sop_class_uid, c.transfer_syntax_uid) for d in group for c in d.candidates})
        for sop_class, ts in pairs:
            ae.add_requested_context(sop_class, ts)
        configure_sender()
        try:
            assoc = associate(ae, peer, self.tls)
        except PeerError as exc:
            self.fail(group, str(exc))
            return 0
        delivered = 0
        try:
            accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
            chosen = _choose_variant(group, accepted)
            if chosen is None:
                self.fail(group, f"{peer.name} accepted none of the encodings offered: " +
                           ", ".join(f"{c.variant} ({c.sop_class_uid}, {c.transfer_syntax_uid})" for c in group[0].candidates))
                return 0
            for delivery in group:
                candidate = chosen[delivery.id]
                reason = ""
                try:
                    payload = self.payload(candidate)
                    status = assoc.send_c_store(payload) if assoc.is_established else None
                except (TranscodeError, DeidentificationError, ConfigError) as exc:
                    status, reason = None, str(exc)
                except Exception as exc:  # noqa: BLE001 - one instance that cannot go must not stop the others
                    status, reason = None, f"send failed: {type(exc).__name__}: {exc}"
                code = int(status.Status) if status is not None and "Status" in status else None
                if code in _SUCCESS:
                    self.mark_delivered(delivery, candidate, peer, code)
                    delivered += 1
                else:
                    if not reason:
                        reason = (f"{peer.name} answered status 0x{code:04X} {status.get('ErrorComment', '')}".strip()
                                  if code is not None else "no response (association lost or timed out)")
                    self.fail([delivery], reason)
        finally:
            if assoc.is_established:
                assoc.release()
        return delivered


class SenderLock:
    """One sender per index. SQLite: an exclusive ``flock`` on ``<index>.sender.lock`` (one
    machine); PostgreSQL: a session advisory lock held by a connection of its own (any number
    of machines). Every process that may send (``serve``, ``serve --role sender``) tries it on
    each tick; the holder sends, the others stand by, and when the holder dies (its file handle
    or its database session goes) a standby takes over within one interval. Two senders never
    deliver the same row twice."""

    #: The PostgreSQL advisory lock key ("SEND").
    POSTGRES_KEY = 0x53454E44

    def __init__(self, location: Path | str) -> None:
        self.location = location
        self.postgres = is_postgres_url(location)
        self.path = None if self.postgres else Path(f"{location}.sender.lock")
        self._fd: int | None = None
        self._conn: Any = None
        self._state = ""

    @property
    def held(self) -> bool:
        """Whether this process holds the lock now (without trying to take it)."""
        return self._fd is not None or self._conn is not None

    def acquire(self) -> bool:
        """Whether this process holds the lock (taking it if it is free)."""
        held = self._acquire_postgres() if self.postgres else self._acquire_file()
        state = "active" if held else "standby"
        if state != self._state:  # one line per change, not per tick
            if held:
                log.info("This process (%d) is the sender for this index", os.getpid())
            else:
                log.info("Another process is the sender for this index (%s); standing by",
                         self.path if self.path is not None else "PostgreSQL advisory lock")
            self._state = state
        return held

    def _acquire_file(self) -> bool:
        if self._fd is not None:
            return True
        assert self.path is not None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def _acquire_postgres(self) -> bool:
        import psycopg

        if self._conn is not None:
            try:
                self._conn.execute("SELECT 1")
                return True
            except psycopg.Error:  # the session went (database restarted): the lock went with it
                log.warning("The sender's database session was lost; taking the sender lock again")
                self._close_connection()
        try:
            conn = psycopg.connect(str(self.location), autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            log.warning("Sender lock: cannot reach the index database (%s); not sending this round", exc)
            return False
        if conn.execute("SELECT pg_try_advisory_lock(%s)", (self.POSTGRES_KEY,)).fetchone()[0]:
            self._conn = conn
            return True
        conn.close()
        return False

    def _close_connection(self) -> None:
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone either way
            pass
        self._conn = None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            self._close_connection()


class SenderScheduler:
    """Runs the sender every ``delivery.interval_seconds`` (a PeriodicTask, one run at a time),
    while this process holds the index's SenderLock."""

    def __init__(self, sender: Sender, interval_seconds: float) -> None:
        self.sender = sender
        self.interval_seconds = interval_seconds
        self.lock = SenderLock(sender.outbox.index.path)
        self._task = PeriodicTask("outbox-sender", self._tick, self.interval_seconds)

    def _tick(self) -> None:
        if self.lock.acquire():
            self.sender.run_once()

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stop()
        self.lock.release()
