"""Hand each accepted connection to the listener process with the fewest open ones.

Several listener processes let concurrent associations run in separate interpreters (one GIL
each). Sharing the port with SO_REUSEPORT leaves the choice to the kernel, which hashes each
connection to a socket without regard to load: four associations on four processes met in
the same process nine times out of ten, and two associations sharing an interpreter run at
about half speed while another process idles. So the supervising process accepts, and passes
the connected socket (SCM_RIGHTS, ``multiprocessing.reduction.send_handle``) to the listener
with the fewest open connections; the listener serves it with pynetdicom's server as if it
had accepted it itself, and says when the connection has closed.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

from .admission import Admission

log = logging.getLogger(__name__)

CLOSED = "closed"


class HandOff:
    """In the supervising process: accept on ``listener``, hand over, count what is open."""

    def __init__(self, listeners: list[tuple[socket.socket, bool]], channels: list[Connection], pids: list[int],
                 max_associations: int = 0, on_refused: Callable[[str, int, str], None] | None = None,
                 request_seconds: float = 10.0, max_pending_per_address: int = 8) -> None:
        #: (listening socket, whether its connections are TLS): the plain and the TLS port.
        self.listeners = listeners
        #: node.max_associations over all listener processes together (0: no limit here); each
        #: process alone would let that many through, times the number of processes.
        self.max_associations = max_associations
        self.on_refused = on_refused
        self.channels = channels
        self.pids = pids
        self.open_counts = [0] * len(channels)
        self.dead: set[int] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Plain connections wait here until their A-ASSOCIATE-RQ is whole (admission.py).
        self.admission = Admission(self._admit, request_seconds=request_seconds,
                                   max_pending_per_address=max_pending_per_address,
                                   has_slot=self._has_slot if max_associations else None, on_refused=on_refused)

    def start(self) -> None:
        self._accepting = []
        for listener, tls in self.listeners:
            listener.settimeout(0.5)  # so the accept loop sees stop()
            self._accepting.append(threading.Thread(target=self._accept_loop, args=(listener, tls), daemon=True,
                                                    name="dicom-node-dispatch-tls" if tls else "dicom-node-dispatch"))
        self._threads = self._accepting + [
            threading.Thread(target=self._closed_loop, args=(n,), name=f"dicom-node-dispatch-{n}", daemon=True)
            for n in range(len(self.channels))]
        self.admission.start()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopped.set()
        for thread in self._accepting:
            thread.join(timeout=5)
        for listener, _ in self.listeners:
            listener.close()
        self.admission.stop()

    def _accept_loop(self, listener: socket.socket, tls: bool) -> None:
        while not self._stopped.is_set():
            try:
                conn, address = listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stopped.is_set():
                    log.error("Accepting a connection failed: %s", exc)
                continue
            if not tls:
                self.admission.offer(conn, address)  # counted once its A-ASSOCIATE-RQ is whole
                continue
            if self.max_associations and not self._has_slot():
                # TLS: a handshake just to refuse costs more than it tells the peer; close.
                conn.close()
                host, port = (str(address[0]), int(address[1])) if isinstance(address, tuple) else (str(address), 0)
                reason = f"local limit exceeded ({self.max_associations} associations open)"
                if self.on_refused is not None:
                    self.on_refused(host, port, reason)
                continue
            self._admit(conn, address, True)

    def _has_slot(self) -> bool:
        with self._lock:
            return sum(self.open_counts) < self.max_associations

    def _admit(self, conn: socket.socket, address: Any, tls: bool) -> None:
        try:
            if not self._hand_over(conn, address, tls):
                log.error("No listener process left to take the connection from %s", address)
        finally:
            conn.close()  # the listener holds its own descriptor now

    def _hand_over(self, conn: socket.socket, address: Any, tls: bool = False) -> bool:
        """Give ``conn`` to the least busy live listener; a listener that cannot take it has
        died (its pipe is broken) and gets no more."""
        while True:
            with self._lock:
                alive = [n for n in range(len(self.channels)) if n not in self.dead]
                if not alive:
                    return False
                target = min(alive, key=self.open_counts.__getitem__)
                self.open_counts[target] += 1
            try:
                self.channels[target].send((address, tls))
                send_handle(self.channels[target], conn.fileno(), self.pids[target])
                return True
            except OSError as exc:
                log.error("Listener process %d cannot take connections any more (%s); using the others", self.pids[target], exc)
                with self._lock:
                    self.dead.add(target)

    def _closed_loop(self, number: int) -> None:
        channel = self.channels[number]
        while True:
            try:
                message = channel.recv()
            except (EOFError, OSError):
                with self._lock:
                    self.dead.add(number)  # the listener process ended: hand it nothing more
                return
            if message == CLOSED:
                with self._lock:
                    self.open_counts[number] = max(0, self.open_counts[number] - 1)


class Receiver:
    """In a listener process: take handed-over connections and serve them with ``server``."""

    def __init__(self, channel: Connection) -> None:
        self.channel = channel
        self.server: Any = None
        self._send_lock = threading.Lock()

    def serve(self, server: Any) -> None:
        """Start handing connections to ``server`` (whose handlers include ``closed``)."""
        self.server = server
        threading.Thread(target=self._loop, name="dicom-node-receive", daemon=True).start()

    def closed(self, *_: Any) -> None:
        """An association's connection closed (EVT_CONN_CLOSE): one fewer open here."""
        with self._send_lock:
            try:
                self.channel.send(CLOSED)
            except OSError:
                pass  # the supervisor is stopping

    def _loop(self) -> None:
        while True:
            try:
                address, tls = self.channel.recv()
                fd = recv_handle(self.channel)
            except (EOFError, OSError):
                return  # the supervisor closed the channel: stopping
            conn = socket.socket(fileno=fd)
            if tls:  # the handshake in a thread of its own (tls.HandshakeServerMixin), then served
                self.server.process_tls_request(conn, address)
            else:  # as socketserver would after accept(): pynetdicom starts a thread per connection
                self.server.process_request(conn, address)
