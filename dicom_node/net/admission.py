"""Admission: a connection becomes an association only once its A-ASSOCIATE-RQ has arrived whole.

pynetdicom starts an association (a thread, a slot under ``maximum_associations``) for every
accepted connection and then waits for the request. Sixteen silent TCP connections took every
slot for the ACSE timeout, and a request trickled a byte at a time held one for the PDU
timeout; reconnecting kept honest senders refused. Here accepted connections wait in one
thread's selector, costing a file descriptor and nothing else, until:

- their A-ASSOCIATE-RQ is in the kernel's buffer, whole (seen with ``MSG_PEEK``, so the
  listener reads the very bytes the peer sent; ``SO_RCVLOWAT`` keeps a partial request from
  waking the selector): then ``admit`` gets them, and only then do they count against
  ``node.max_associations`` (``has_slot``; a full node answers A-ASSOCIATE-RJ, rejected-
  transient, local limit exceeded, from this thread);
- or ``node.association_request_seconds`` pass: closed, one summary log line per source;
- or the peer closes: dropped.

A source address may have at most ``node.max_pending_per_address`` connections waiting at once
(an honest sender's requests arrive within milliseconds, so it never gets near); more are
answered A-ASSOCIATE-RJ and closed. Refusals are written without blocking and the connection
lingers (its peer reads the answer and closes first, as after the ARTIM wait) for at most
``LINGER_SECONDS``: no thread per refusal, and no more than ``max_waiting`` sockets held in all.
Anything that is not an A-ASSOCIATE-RQ (the first byte is not PDU type 1), a request whose peer
stopped sending before it was whole (half-closed), and TLS connections (their bytes are
encrypted; the hand-off and the TLS server hand them over themselves, bounded by the
handshake caps in tls.py) go to the listener at once: it answers those as before.
"""

from __future__ import annotations

import logging
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ: PDU type 3, length 4; result 2 (rejected-transient), source 3 (service-provider,
#: presentation related), reason 2 (local-limit-exceeded).
LOCAL_LIMIT_RJ = bytes([0x03, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x02, 0x03, 0x02])
#: How much of a request is waited for in the kernel's buffer (larger requests are admitted once
#: this much is there; the listener's PDU deadline covers the rest).
PEEK_LIMIT = 32768
LINGER_SECONDS = 2.0
TICK = 0.25
SUMMARY_SECONDS = 10.0


@dataclass
class _Waiting:
    conn: socket.socket
    address: Any
    deadline: float
    host: str
    refusing: bool = False
    need: int = 6


@dataclass
class _Summary:
    """Closed connections per source, logged once per SUMMARY_SECONDS rather than once each."""

    expired: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    overflow: int = 0
    logged_at: float = 0.0


class Admission:
    """The waiting room in front of the listener (module docstring)."""

    def __init__(self, admit: Callable[[socket.socket, Any, bool], None], *, request_seconds: float,
                 max_pending_per_address: int, has_slot: Callable[[], bool] | None = None,
                 on_refused: Callable[[str, int, str], None] | None = None, max_waiting: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.admit = admit
        self.request_seconds = request_seconds
        self.max_pending_per_address = max_pending_per_address
        self.has_slot = has_slot
        self.on_refused = on_refused
        self.max_waiting = max_waiting
        self.clock = clock
        self._selector = selectors.DefaultSelector()
        self._incoming: list[tuple[socket.socket, Any]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._waiting: dict[int, _Waiting] = {}
        self._pending: Counter[str] = Counter()
        self._summary = _Summary()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicom-node-admission", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake()
        self._thread.join(timeout=5)
        self._log_summary(float("inf"))  # what happened since the last summary
        for waiting in list(self._waiting.values()):
            waiting.conn.close()
        self._waiting.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def offer(self, conn: socket.socket, address: Any) -> None:
        """A plain connection just accepted (from any thread); this class owns it from now on.
        TLS connections are not offered: their bytes are encrypted, the callers hand them over."""
        with self._lock:
            self._incoming.append((conn, address))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the wake-up pipe is full: the thread is awake already, or stopping

    # -- the admission thread --------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                events = self._selector.select(timeout=TICK)
            except OSError:
                break
            for key, _ in events:
                if key.data is None:
                    self._drain_wake()
                else:
                    self._readable(key.data)
            self._take_incoming()
            self._expire(self.clock())
            self._log_summary(self.clock())

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _take_incoming(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
        now = self.clock()
        for conn, address in incoming:
            host = str(address[0]) if isinstance(address, tuple) else str(address)
            if len(self._waiting) >= self.max_waiting:
                self._summary.overflow += 1
                conn.close()
                continue
            conn.setblocking(False)
            waiting = _Waiting(conn, address, now + self.request_seconds, host)
            if self.max_pending_per_address and self._pending[host] >= self.max_pending_per_address:
                self._summary.refused[host] += 1
                self._refuse(waiting, f"{self._pending[host]} connections from {host} already waiting for their "
                                      "A-ASSOCIATE-RQ", now)
                continue
            self._pending[host] += 1
            self._set_lowat(conn, 6)
            self._waiting[conn.fileno()] = waiting
            self._selector.register(conn, selectors.EVENT_READ, waiting)

    def _readable(self, waiting: _Waiting) -> None:
        conn = waiting.conn
        if waiting.refusing:  # lingering after the A-ASSOCIATE-RJ: read and drop until the peer closes
            try:
                if conn.recv(65536):
                    return
            except BlockingIOError:
                return
            except OSError:
                pass
            self._drop(waiting)
            return
        try:
            head = conn.recv(PEEK_LIMIT, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            head = b""
        if not head:  # the peer closed before sending anything: no slot was ever taken
            self._drop(waiting)
            return
        if head[0] != 0x01 or len(head) < waiting.need:
            # Not an association request, or fewer bytes than SO_RCVLOWAT asked for: the peer
            # has finished sending (half-closed) and its request will never be whole. The
            # listener reads what there is and answers as it always has.
            self._release(waiting)
            self._hand_over(conn, waiting.address, False)
            return
        need = _request_length(head)
        if len(head) < need:
            if need != waiting.need:
                waiting.need = need
                self._set_lowat(conn, need)
            return
        self._admit_whole(waiting)

    def _admit_whole(self, waiting: _Waiting) -> None:
        """A whole A-ASSOCIATE-RQ is in the buffer: to the listener, or refused when it has no slot."""
        self._release(waiting)
        if self.has_slot is not None and not self.has_slot():
            self._refuse(waiting, "local limit exceeded (node.max_associations associations open)", self.clock())
            return
        self._hand_over(waiting.conn, waiting.address, False)

    def _hand_over(self, conn: socket.socket, address: Any, tls: bool) -> None:
        try:
            conn.setblocking(True)
            self._set_lowat(conn, 1)
            self.admit(conn, address, tls)
        except Exception:  # noqa: BLE001 - one connection's failure must not stop admission
            log.exception("Handing a connection from %s to the listener failed", address)
            conn.close()

    def _refuse(self, waiting: _Waiting, reason: str, now: float) -> None:
        """Answer A-ASSOCIATE-RJ without blocking, then linger for the peer to close."""
        conn = waiting.conn
        try:
            conn.send(LOCAL_LIMIT_RJ)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        waiting.refusing, waiting.deadline = True, now + LINGER_SECONDS
        self._set_lowat(conn, 1)
        self._waiting[conn.fileno()] = waiting
        try:
            self._selector.register(conn, selectors.EVENT_READ, waiting)
        except (KeyError, ValueError):
            self._selector.modify(conn, selectors.EVENT_READ, waiting)
        if self.on_refused is not None:
            port = int(waiting.address[1]) if isinstance(waiting.address, tuple) else 0
            self.on_refused(waiting.host, port, reason)

    def _release(self, waiting: _Waiting) -> None:
        """Out of the waiting room (admitted or refused): no longer pending for its address."""
        self._waiting.pop(waiting.conn.fileno(), None)
        try:
            self._selector.unregister(waiting.conn)
        except (KeyError, ValueError):
            pass
        self._pending[waiting.host] -= 1
        if self._pending[waiting.host] <= 0:
            del self._pending[waiting.host]

    def _drop(self, waiting: _Waiting) -> None:
        if waiting.refusing:
            self._waiting.pop(waiting.conn.fileno(), None)
            try:
                self._selector.unregister(waiting.conn)
            except (KeyError, ValueError):
                pass
        else:
            self._release(waiting)
        waiting.conn.close()

    def _expire(self, now: float) -> None:
        for waiting in [w for w in self._waiting.values() if w.deadline <= now]:
            if not waiting.refusing and _whole_request_waiting(waiting.conn):
                # It came whole while this thread was busy with others (a storm on a starved
                # CPU): the sender kept its side of the deadline, so it is admitted, not closed.
                self._admit_whole(waiting)
                continue
            if not waiting.refusing:
                self._summary.expired[waiting.host] += 1
            self._drop(waiting)

    def _log_summary(self, now: float) -> None:
        summary = self._summary
        if now - summary.logged_at < SUMMARY_SECONDS:
            return
        for host, count in summary.expired.items():
            log.warning("Closed %d connection(s) from %s that sent no whole A-ASSOCIATE-RQ within %.0f s", count, host,
                        self.request_seconds)
        for host, count in summary.refused.items():
            log.warning("Refused %d connection(s) from %s: over node.max_pending_per_address (%d waiting at once)",
                        count, host, self.max_pending_per_address)
        if summary.overflow:
            log.error("Closed %d connection(s) at once: %d already waiting for their requests", summary.overflow,
                      self.max_waiting)
        self._summary = _Summary(logged_at=now)

    @staticmethod
    def _set_lowat(conn: socket.socket, size: int) -> None:
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
        except OSError:
            pass  # without it a partial request only costs a few extra wake-ups


def _request_length(head: bytes) -> int:
    """The bytes an A-ASSOCIATE-RQ that starts with ``head`` (at least 6 bytes) takes, at most
    PEEK_LIMIT (a longer one is admitted once that much is there)."""
    return min(6 + struct.unpack(">L", head[2:6])[0], PEEK_LIMIT)


def _whole_request_waiting(conn: socket.socket) -> bool:
    """Whether a whole A-ASSOCIATE-RQ (or its first PEEK_LIMIT bytes) is in ``conn``'s buffer."""
    try:
        head = conn.recv(PEEK_LIMIT, socket.MSG_PEEK)
    except OSError:
        return False
    return len(head) >= 6 and head[0] == 0x01 and len(head) >= _request_length(head)
