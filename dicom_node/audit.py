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
"""

from __future__ import annotations

import fcntl
import hashlib
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

log = logging.getLogger(__name__)

GENESIS = "0" * 64
#: RFC 5424 PRI: facility 10 (security/authorization, authpriv), severity notice (5) or warning (4).
_PRI_NOTICE, _PRI_WARNING = 10 * 8 + 5, 10 * 8 + 4


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


class AuditLog:
    """Append-only, hash-chained JSON lines, safe to call from many threads and processes."""

    def __init__(self, path: Path, node_ae: str = "", syslog: Any = None) -> None:
        self.path = path
        self.node_ae = node_ae
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "ab")  # noqa: SIM115 - lives as long as the node
        self._lock = threading.Lock()
        self._sink = SyslogSink(syslog, node_ae) if syslog is not None else None

    def write(self, event: str, **fields: Any) -> None:
        now = time.time()
        record: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)), "event": event,
                                  **fields}
        message = dicom_message(event, fields, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + "Z",
                                self.node_ae or "dicom-node")
        if message is not None:
            record["dicom"] = message
        with self._lock:
            if self._fh.closed:
                return
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
            try:
                prev, seq = _last_link(self.path)
                record["seq"], record["prev"] = seq + 1, prev
                line = json.dumps(record, default=str).encode("utf-8") + b"\n"
                self._fh.write(line)
                self._fh.flush()
            finally:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        if self._sink is not None and message is not None:
            self._sink.send(message, warning=event == "association" and fields.get("outcome") == "rejected")

    def close(self) -> None:
        with self._lock:
            self._fh.close()
        if self._sink is not None:
            self._sink.close()


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


def verify(path: Path) -> tuple[int, list[Break]]:
    """(records checked, breaks): each record's ``prev`` must be the hash of the line before it
    and its ``seq`` one more. Records written before the chain existed (no ``seq``) at the
    start of the file are counted, not checked."""
    breaks: list[Break] = []
    prev_hash, prev_seq, checked = GENESIS, 0, 0
    chained = False
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
        prev_hash, prev_seq = line_hash(line), seq if isinstance(seq, int) else prev_seq
    return checked, breaks


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

    def send(self, message: dict[str, Any], warning: bool = False) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        body = json.dumps(message, separators=(",", ":"))
        frame = (f"<{_PRI_WARNING if warning else _PRI_NOTICE}>1 {stamp} {self.hostname} {self.app_name} {os.getpid()} "
                 f"DICOM-AUDIT - ").encode("utf-8") + b"\xef\xbb\xbf" + body.encode("utf-8")  # BOM: the MSG is UTF-8
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
