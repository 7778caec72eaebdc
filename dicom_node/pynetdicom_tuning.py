"""Event-driven waits for pynetdicom's two reactor threads.

pynetdicom runs each association as two threads that poll: the DUL thread sleeps 1 ms whenever
it finds nothing to do (its own comment in dul.py: "try and make this event based rather than
running loops"), and the association reactor sleeps 1 ms before each look at the DIMSE queue.
One C-STORE crosses three such sleeps (request in, handler, response out), which caps a
pynetdicom SCP near 300 small instances/s whatever the handler does.

This module keeps pynetdicom's logic and replaces only those idle sleeps with waits that end
as soon as there is work:

* the DUL thread waits in ``select()`` on its socket and on a wake-up socket pair, which
  ``send_pdu`` (the only way other threads hand it work) pokes after queueing a primitive;
* the association reactor waits on its DIMSE message queue's condition variable.

Both waits are capped (``IDLE_WAIT``), so timers (ARTIM, idle timeout) and kill flags are
still seen promptly. Anything unusual (TLS sockets, which may hold buffered bytes ``select``
cannot see; a closed socket; a thread we do not recognise) falls back to the original sleep.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from typing import Any

from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

#: Longest a reactor thread waits before re-checking its timers and flags.
IDLE_WAIT = 0.005

_REACTOR_POLL = 0.001  # the reactor's own per-loop sleep in pynetdicom 2.x/3.x
_WAKER_ATTR = "_dicom_node_waker"
_installed = False
_install_lock = threading.Lock()


class _Waker:
    """A socket pair that lets another thread interrupt a ``select()``."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def notify(self) -> None:
        try:
            self.writer.send(b"\0")
        except OSError:  # buffer full (already poked) or closed: either way the waiter wakes
            pass

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class _DulTime:
    """Stands in for the ``time`` module inside pynetdicom.dul."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        if not isinstance(thread, DULServiceProvider):
            time.sleep(seconds)
            return
        raw = getattr(thread.socket, "socket", None)
        if raw is None or isinstance(raw, ssl.SSLSocket) or raw.fileno() < 0:
            time.sleep(seconds)
            return
        waker = getattr(thread, _WAKER_ATTR, None)
        if waker is None:
            waker = _Waker()
            setattr(thread, _WAKER_ATTR, waker)
        if thread.to_provider_queue.qsize() or thread._kill_thread:
            return
        try:
            select.select([raw, waker.reader], [], [], IDLE_WAIT)
        except (OSError, ValueError):
            time.sleep(seconds)
            return
        waker.drain()


class _AssociationTime:
    """Stands in for the ``time`` module inside pynetdicom.association."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        if seconds != _REACTOR_POLL or not isinstance(thread, Association) or thread._kill:
            time.sleep(seconds)
            return
        messages = thread.dimse.msg_queue
        with messages.not_empty:
            if not messages._qsize():
                messages.not_empty.wait(IDLE_WAIT)


def install() -> None:
    """Patch pynetdicom once per process (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        original_send_pdu = DULServiceProvider.send_pdu

        def send_pdu(self: DULServiceProvider, primitive: Any) -> None:
            original_send_pdu(self, primitive)
            waker = getattr(self, _WAKER_ATTR, None)
            if waker is not None:
                waker.notify()

        original_run = DULServiceProvider.run_reactor

        def run_reactor(self: DULServiceProvider) -> None:
            try:
                original_run(self)
            finally:
                waker = getattr(self, _WAKER_ATTR, None)
                if waker is not None:
                    waker.close()

        DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]
        DULServiceProvider.run_reactor = run_reactor  # type: ignore[method-assign]
        _dul.time = _DulTime()  # type: ignore[assignment]
        _association.time = _AssociationTime()  # type: ignore[assignment]
        _installed = True
