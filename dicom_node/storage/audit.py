"""The audit trail: one JSON object per line for every association, refusal, delivery and removal.

Radiology IT reads this to answer "who sent what, from where, and what happened"; a security
team's ATNA audit repository reads the same events as DICOM audit messages (the ``dicom`` member
of each record that is one, audit_messages.py), here and, with ``audit.syslog``, sent to it as
RFC 5424 syslog messages over TCP or TLS (RFC 5425 framing).

Tamper-evident: every record carries ``seq`` (one more than the record before) and ``prev``, the
SHA-256 of the line before it, so a changed, removed or inserted line breaks the chain at the
next one; ``dicom-node audit verify`` walks it. Several processes of one node append to the same
file (listener processes, workers, the supervisor): each append takes an exclusive lock on the
file (flock) and reads the last line it finds there, so the chain stays one chain. Lines are
appended and flushed as they happen; the file is never rewritten.

The chain alone cannot show that its end was cut off or rewritten (a cut file is a shorter
valid chain, and the next record would chain onto a forged tail), so with a key
(``audit.key_file``; AuditLog.from_config always has one) the end is anchored outside the file:
- the anchor, ``<file>.anchor``: the seq and hash of the last record the node wrote and the
  last checkpoint's number, HMAC-signed, rewritten (atomically, under the same lock) with every
  record. Before appending, each writer compares the file's last record with the anchor, and
  the anchor with the last record it wrote itself; a disagreement is written as a Security
  Alert record (``audit_tampered``, ERROR in the log, a warning to the syslog repository)
  before the new record, which then chains onto what the file holds so the chain stays
  walkable.
- checkpoints: every ``checkpoint_records`` records or ``checkpoint_seconds`` seconds, an
  ``audit_checkpoint`` record numbered one more than the last, whose HMAC covers its number,
  seq and the hash of the line before it (and so, through the chain, everything before it);
  also sent to the syslog repository, which keeps them off this machine.
``verify`` checks every checkpoint's signature and numbering and the file's end against the
anchor, and names records missing after the last checkpoint. What this cannot catch is
someone holding the key who rewrites the file, anchor and checkpoints together: the copies the
syslog repository received are the anchor then (SECURITY.md).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from .audit_chain import (
    CHECKPOINT,
    TAMPERED,
    Anchor,
    anchor_path,
    checkpoint_mac,
    default_key_path,
    last_checkpoint,
    last_link,
    line_hash,
    load_key,
)
from .audit_messages import dicom_message
from .audit_syslog import SyslogSink
from .store import fsync_directory, make_durable_dirs

log = logging.getLogger(__name__)


class AuditLog:
    """Append-only, hash-chained JSON lines, safe to call from many threads and processes; with
    ``key_file``, anchored and checkpointed (module docstring)."""

    def __init__(self, path: Path, node_ae: str = "", syslog: Any = None, key_file: Path | None = None,
                 checkpoint_records: int = 100, checkpoint_seconds: float = 300.0, clock: Any = time.time) -> None:
        self.path = path
        self.node_ae = node_ae
        self.clock = clock
        make_durable_dirs(path.parent)
        created = not path.exists()
        self._fh = open(path, "ab")  # noqa: SIM115 - lives as long as the node
        if created:
            fsync_directory(path.parent)
        self._lock = threading.Lock()
        self._sink = SyslogSink(syslog, node_ae) if syslog is not None else None
        self._key = load_key(key_file, create=True) if key_file is not None else None
        self._anchor_path = anchor_path(path)
        self.checkpoint_records = checkpoint_records
        self.checkpoint_seconds = checkpoint_seconds
        #: (seq, hash) of the last record this writer appended: an anchor older than it was rolled back.
        self._mine: tuple[int, str] | None = None
        if self._key is not None:
            self._adopt_or_check()

    @classmethod
    def from_config(cls, config: Any) -> AuditLog:
        """The node's audit trail as configured (audit.path, audit.key_file, checkpoints, syslog)."""
        audit = config.audit
        return cls(audit.path, config.node.ae_title, audit.syslog, audit.key_file or default_key_path(audit.path),
                   audit.checkpoint_records, audit.checkpoint_seconds)

    def write(self, event: str, **fields: Any) -> None:
        record = self._record(event, fields)
        alerts: list[dict[str, Any]] = []
        checkpoint: dict[str, Any] | None = None
        with self._lock:
            if self._fh.closed:
                return
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
            try:
                prev, seq = last_link(self.path)
                anchor = None
                if self._key is not None:
                    anchor, problems = self._tail_problems(prev, seq)
                    for problem in problems:
                        alert = self._record("security_alert", {"alert": TAMPERED, "object": str(self.path),
                                                                "description": problem})
                        prev, seq = self._append(alert, prev, seq)
                        alerts.append(alert)
                prev, seq = self._append(record, prev, seq)
                if self._key is not None:
                    checkpoint, prev, seq, anchor = self._maybe_checkpoint(anchor, prev, seq)
                self._fh.flush()
                os.fsync(self._fh.fileno())  # a power cut must not take back what the anchor names
                if self._key is not None:
                    self._write_anchor(Anchor(seq, prev, anchor.checkpoint, anchor.checkpoint_seq, anchor.checkpoint_time))
                    self._mine = (seq, prev)
            finally:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        for alert in alerts:
            log.error("Audit trail %s: %s (Security Alert recorded)", self.path, alert["description"])
        if self._sink is not None:
            for alert in alerts:
                self._sink.send(alert["dicom"], warning=True)
            if record.get("dicom") is not None:
                self._sink.send(record["dicom"], warning=event == "association" and fields.get("outcome") == "rejected")
            if checkpoint is not None:
                self._sink.send({key: checkpoint[key] for key in ("checkpoint", "seq", "prev", "time", "mac")},
                                msgid="AUDIT-CHECKPOINT")

    def _record(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        record: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)), "event": event,
                                  **fields}
        message = dicom_message(event, fields, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + "Z",
                                self.node_ae or "dicom-node")
        if message is not None:
            record["dicom"] = message
        return record

    def _append(self, record: dict[str, Any], prev: str, seq: int) -> tuple[str, int]:
        """Chain ``record`` onto (prev, seq) and write it; the new (prev, seq)."""
        record["seq"], record["prev"] = seq + 1, prev
        if record.get("event") == CHECKPOINT and self._key is not None:
            record["mac"] = checkpoint_mac(self._key, record["checkpoint"], seq + 1, prev)
        line = json.dumps(record, default=str).encode("utf-8")
        self._fh.write(line + b"\n")
        return line_hash(line), seq + 1

    def _tail_problems(self, prev: str, seq: int) -> tuple[Anchor, list[str]]:
        """The anchor to build on, and what disagrees between the file's end, the anchor and this
        writer's own last record."""
        anchor, problem = Anchor.read(self._anchor_path, self._key)
        problems = [problem] if problem else []
        if anchor is None:
            if not problem:
                problems.append(f"the anchor {self._anchor_path} is missing (removed)")
            return Anchor(seq, prev, 0, seq, self.clock()) if seq == 0 else self._reanchor(seq, prev), problems
        if (anchor.seq, anchor.hash) != (seq, prev):
            if seq < anchor.seq:
                problems.append(f"the file ends at seq {seq}, but the node wrote up to seq {anchor.seq}: "
                                f"{anchor.seq - seq} record(s) removed from its end")
            elif seq == anchor.seq:
                problems.append(f"the last record (seq {seq}) was changed after the node wrote it")
            else:
                problems.append(f"{seq - anchor.seq} record(s) after seq {anchor.seq} were appended by something other "
                                "than the node, or the end was changed")
        if self._mine is not None and anchor.seq < self._mine[0]:
            problems.append(f"the anchor names seq {anchor.seq}, but this process wrote seq {self._mine[0]}: the anchor "
                            "was replaced by an older one")
        return anchor, problems

    def _reanchor(self, seq: int, prev: str) -> Anchor:
        """After a lost anchor: checkpoint numbering goes on from the file's last checkpoint."""
        number, at, when = last_checkpoint(self.path)
        return Anchor(seq, prev, number, at, when)

    def _maybe_checkpoint(self, anchor: Anchor, prev: str, seq: int) -> tuple[dict[str, Any] | None, str, int, Anchor]:
        now = self.clock()
        if seq - anchor.checkpoint_seq < self.checkpoint_records and now - anchor.checkpoint_time < self.checkpoint_seconds:
            return None, prev, seq, anchor
        number = anchor.checkpoint + 1
        record = self._record(CHECKPOINT, {"checkpoint": number, "covers": seq, "pid": os.getpid()})
        prev, seq = self._append(record, prev, seq)
        return record, prev, seq, Anchor(seq, prev, number, seq, now)

    def _write_anchor(self, anchor: Anchor) -> None:
        assert self._key is not None
        part = self._anchor_path.with_name(f".{self._anchor_path.name}.{os.getpid()}.part")
        with open(part, "wb") as out:
            out.write(anchor.signed(self._key))
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, self._anchor_path)
        fsync_directory(self._anchor_path.parent)

    def _adopt_or_check(self) -> None:
        """At open: a trail with no anchor and no checkpoint (new, or from a release before
        anchors) is anchored as it stands; any other disagreement is alerted at the next write."""
        if self._anchor_path.exists():
            return
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        try:
            if self._anchor_path.exists() or last_checkpoint(self.path)[0]:
                return  # a lost anchor: the next write says so
            prev, seq = last_link(self.path)
            self._write_anchor(Anchor(seq, prev, 0, seq, self.clock()))
            if seq:
                log.info("Audit trail %s: anchored as it stands at seq %d", self.path, seq)
        finally:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            self._fh.close()
        if self._sink is not None:
            self._sink.close()
