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
import hashlib
import hmac
import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit_messages import dicom_message
from .store import fsync_directory, make_durable_dirs

log = logging.getLogger(__name__)

GENESIS = "0" * 64
#: RFC 5424 PRI: facility 10 (security/authorization, authpriv), severity notice (5) or warning (4).
_PRI_NOTICE, _PRI_WARNING = 10 * 8 + 5, 10 * 8 + 4


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


ANCHOR_SUFFIX = ".anchor"
TAMPERED = "audit_tampered"
CHECKPOINT = "audit_checkpoint"


def anchor_path(path: Path) -> Path:
    return path.with_name(path.name + ANCHOR_SUFFIX)


def default_key_path(path: Path) -> Path:
    return path.with_name(path.name + ".key")


def load_key(path: Path, create: bool = False) -> bytes:
    """The audit key (at least 32 bytes), created owner-only with 32 random bytes when asked and absent."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process of the node made it first
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(os.urandom(32))
                out.flush()
                os.fsync(out.fileno())
    key = path.read_bytes()
    if len(key) < 32:
        raise ValueError(f"audit key {path} holds {len(key)} bytes; it needs at least 32 (head -c 32 /dev/urandom)")
    return key


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("ascii"), hashlib.sha256).hexdigest()


def checkpoint_mac(key: bytes, checkpoint: int, seq: int, prev: str) -> str:
    return _mac(key, f"checkpoint|{checkpoint}|{seq}|{prev}")


@dataclass(frozen=True)
class Anchor:
    """The end of the trail as the node last wrote it, kept beside the file."""

    seq: int
    hash: str
    checkpoint: int
    checkpoint_seq: int
    checkpoint_time: float

    def signed(self, key: bytes) -> bytes:
        body = {"seq": self.seq, "hash": self.hash, "checkpoint": self.checkpoint, "checkpoint_seq": self.checkpoint_seq,
                "checkpoint_time": self.checkpoint_time}
        body["mac"] = _mac(key, json.dumps(body, sort_keys=True))
        return json.dumps(body, sort_keys=True).encode("ascii")

    @staticmethod
    def read(path: Path, key: bytes | None) -> tuple[Anchor | None, str | None]:
        """(anchor, problem): (None, None) when there is no anchor file."""
        try:
            data = json.loads(path.read_bytes())
            mac = data.pop("mac")
            anchor = Anchor(int(data["seq"]), str(data["hash"]), int(data["checkpoint"]), int(data["checkpoint_seq"]),
                            float(data["checkpoint_time"]))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None, f"the anchor {path} is unreadable"
        if key is not None and not hmac.compare_digest(str(mac), _mac(key, json.dumps(data, sort_keys=True))):
            return None, f"the anchor {path} is not signed by the audit key (forged or changed)"
        return anchor, None


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
                prev, seq = _last_link(self.path)
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
        number, at, when = _last_checkpoint(self.path)
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
            if self._anchor_path.exists() or _last_checkpoint(self.path)[0]:
                return  # a lost anchor: the next write says so
            prev, seq = _last_link(self.path)
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


def _last_checkpoint(path: Path) -> tuple[int, int, float]:
    """(number, seq, time) of the file's last checkpoint record, (0, 0, 0.0) without one."""
    found = (0, 0, 0.0)
    marker = f'"event": "{CHECKPOINT}"'.encode()
    with open(path, "rb") as fh:
        for line in fh:
            if marker in line:
                try:
                    record = json.loads(line)
                    found = (int(record["checkpoint"]), int(record["seq"]), time.time())
                except (ValueError, KeyError, TypeError):
                    continue
    return found


def _last_link(path: Path) -> tuple[str, int]:
    """(hash of the last line, its seq) of the file, (GENESIS, 0) when it is empty or its last
    line predates the chain."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        if end == 0:
            return GENESIS, 0
        size = 4096
        while True:
            start = max(0, end - size)
            fh.seek(start)
            chunk = fh.read(end - start)
            body = chunk.rstrip(b"\n")
            cut = body.rfind(b"\n")
            if cut >= 0 or start == 0:
                last = body[cut + 1:]
                break
            size *= 4
    try:
        seq = int(json.loads(last).get("seq", 0))
    except (ValueError, AttributeError):
        seq = 0
    return line_hash(last), seq


@dataclass(frozen=True)
class Break:
    line: int
    problem: str


def verify(path: Path, key: bytes | None = None) -> tuple[int, list[Break]]:
    """(records checked, breaks): each record's ``prev`` must be the hash of the line before it
    and its ``seq`` one more. Records written before the chain existed (no ``seq``) at the
    start of the file are counted, not checked. Checkpoints must be numbered one after another
    and, given the ``key``, carry a valid signature; the end of the file must be where the
    anchor (``<file>.anchor``, when there is one) says the node left it; and every Security
    Alert the node recorded about the trail itself is reported."""
    breaks: list[Break] = []
    prev_hash, prev_seq, checked = GENESIS, 0, 0
    chained = False
    anchor, anchor_problem = Anchor.read(anchor_path(path), key)
    last_checkpoint = 0
    anchor_line: tuple[int, str] | None = None  # (line number, hash) of the record at the anchor's seq
    number = 0
    for number, line in enumerate(_read_locked(path).splitlines(), start=1):
        if not line.strip():
            breaks.append(Break(number, "an empty line"))
            continue
        try:
            record = json.loads(line)
        except ValueError:
            breaks.append(Break(number, "not a JSON record (changed or cut)"))
            prev_hash = line_hash(line)
            continue
        checked += 1
        if "seq" not in record and not chained:
            prev_hash = line_hash(line)
            continue
        chained = True
        if record.get("prev") != prev_hash:
            breaks.append(Break(number, f"line {number - 1} was changed, or lines before this one were removed "
                                        "(its hash does not match this record's prev)"))
        seq = record.get("seq")
        if isinstance(seq, int) and prev_seq and seq != prev_seq + 1:
            if seq > prev_seq + 1:
                breaks.append(Break(number, f"{seq - prev_seq - 1} record(s) missing before this one (seq {prev_seq} "
                                            f"then {seq})"))
            else:
                breaks.append(Break(number, f"seq {seq} after {prev_seq}: a record inserted or repeated"))
        if record.get("event") == CHECKPOINT:
            breaks.extend(Break(number, problem) for problem in _checkpoint_problems(record, last_checkpoint, key))
            last_checkpoint = record.get("checkpoint", last_checkpoint) if isinstance(record.get("checkpoint"), int) \
                else last_checkpoint
        elif record.get("event") == "security_alert" and record.get("alert") == TAMPERED:
            breaks.append(Break(number, f"the node found the trail tampered with: {record.get('description')}"))
        prev_hash, prev_seq = line_hash(line), seq if isinstance(seq, int) else prev_seq
        if anchor is not None and seq == anchor.seq:
            anchor_line = (number, prev_hash)
    end = number + 1
    if anchor_problem:
        breaks.append(Break(end, anchor_problem))
    elif anchor is None:
        if last_checkpoint:
            breaks.append(Break(end, f"the anchor {anchor_path(path)} is missing: the end of the trail cannot be checked "
                                     f"past checkpoint {last_checkpoint}"))
    else:
        if prev_seq < anchor.seq:
            breaks.append(Break(end, f"{anchor.seq - prev_seq} record(s) missing at the end: the file ends at seq "
                                     f"{prev_seq}, the node wrote up to seq {anchor.seq}"))
        elif anchor_line is not None and anchor_line[1] != anchor.hash:
            breaks.append(Break(anchor_line[0], f"record seq {anchor.seq} was changed after the node wrote it (it "
                                                "differs from the anchor)"))
        if prev_seq > anchor.seq:
            breaks.append(Break(end, f"{prev_seq - anchor.seq} record(s) after seq {anchor.seq} were not written by the "
                                     "node (they are not in the anchor)"))
        if anchor.checkpoint != last_checkpoint and prev_seq >= anchor.seq:
            breaks.append(Break(end, f"the last checkpoint in the file is {last_checkpoint}, the node wrote "
                                     f"checkpoint {anchor.checkpoint}: checkpoints removed"))
    return checked, breaks


def _checkpoint_problems(record: dict[str, Any], last: int, key: bytes | None) -> list[str]:
    number = record.get("checkpoint")
    if not isinstance(number, int):
        return ["a checkpoint without its number"]
    problems = []
    if number != last + 1:
        problems.append(f"checkpoint {number} follows checkpoint {last}: "
                        + (f"checkpoint(s) {last + 1}-{number - 1} removed" if number > last + 1 else "repeated"))
    if key is not None and not hmac.compare_digest(str(record.get("mac")), checkpoint_mac(
            key, number, int(record.get("seq", 0)), str(record.get("prev")))):
        problems.append(f"checkpoint {number}'s signature does not match: the records before it were changed and "
                        "chained again, or the checkpoint is forged")
    return problems


def records_after_last_checkpoint(path: Path) -> int:
    """How many records the file holds after its last checkpoint (not yet covered by a signature)."""
    records = read_audit(path)
    last = max((n for n, r in enumerate(records) if r.get("event") == CHECKPOINT), default=-1)
    return len(records) - last - 1


class SyslogSink:
    """RFC 5424 messages to the hospital's audit repository, over TCP or TLS with RFC 5425/6587
    octet-counting framing, from a thread of its own: the node never waits on it. A repository
    that is down is retried with backoff; at most ``queue_size`` messages wait (the file keeps
    every record regardless), more are dropped with one log line."""

    def __init__(self, config: Any, node_ae: str, queue_size: int = 10000) -> None:
        self.config = config
        self.app_name = (node_ae or "dicom-node").replace(" ", "_")[:48]
        self.hostname = socket.gethostname()[:255] or "-"
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queue_size)
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def send(self, message: dict[str, Any], warning: bool = False, msgid: str = "DICOM-AUDIT") -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        body = json.dumps(message, separators=(",", ":"))
        frame = (f"<{_PRI_WARNING if warning else _PRI_NOTICE}>1 {stamp} {self.hostname} {self.app_name} {os.getpid()} "
                 f"{msgid} - ").encode("utf-8") + b"\xef\xbb\xbf" + body.encode("utf-8")  # BOM: the MSG is UTF-8
        try:
            self._queue.put_nowait(f"{len(frame)} ".encode() + frame)
        except queue.Full:
            self._dropped += 1
            if self._dropped in (1, 100, 10000):
                log.error("Audit syslog: %d message(s) dropped, the repository at %s:%d is not keeping up (the audit "
                          "file has every record)", self._dropped, self.config.host, self.config.port)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.config.host, self.config.port), timeout=10)
        if self.config.transport == "tls":
            context = ssl.create_default_context(cafile=str(self.config.ca_certificates) if self.config.ca_certificates else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            return context.wrap_socket(sock, server_hostname=self.config.server_hostname or self.config.host)
        return sock

    def _frames(self) -> Iterator[bytes | None]:
        while True:
            yield self._queue.get()

    def _run(self) -> None:
        sock: socket.socket | None = None
        delay = 1.0
        for frame in self._frames():
            if frame is None:
                break
            while True:
                try:
                    if sock is None:
                        sock = self._connect()
                        delay = 1.0
                    sock.sendall(frame)
                    break
                except OSError as exc:
                    if sock is not None:
                        sock.close()
                        sock = None
                    log.warning("Audit syslog to %s:%d failed (%s); retrying in %.0f s", self.config.host, self.config.port,
                                exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 60.0)
        if sock is not None:
            sock.close()


def _read_locked(path: Path) -> bytes:
    """The file's bytes under a shared lock: a writer holds the exclusive one from the first byte
    of a record to its newline, so a reader never sees half a record."""
    with open(path, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        try:
            return fh.read()
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_audit(path: Path) -> list[dict[str, Any]]:
    """All records of an audit file (for tests and tooling)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in _read_locked(path).decode("utf-8").splitlines() if line.strip()]
