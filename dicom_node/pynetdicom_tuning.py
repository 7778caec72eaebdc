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

Each new association deep-copies the acceptor's presentation contexts (170 storage classes x
45 transfer syntaxes here), and deep-copying a pydicom ``UID`` rebuilds and re-validates it:
0.2 s of CPU per association. A UID is an immutable string, so its deep copy is itself.

It reads each PDU with ``recv_into`` a buffer of the PDU's size (pynetdicom reads 4 KiB at a
time: 128 system calls and copies for every 512 KiB slice).

It also writes the File Meta Information of streamed C-STORE files with a direct encoder
(pydicom's general writer validates and re-encodes, ~0.3 ms a file on the hot path); the
encoder handles exactly the elements pynetdicom puts there and defers to pydicom otherwise,
and a test pins its output to pydicom's, byte for byte.

Both waits are capped (``IDLE_WAIT``), so timers (ARTIM, idle timeout) and kill flags are
still seen promptly. Anything unusual (TLS sockets, which may hold buffered bytes ``select``
cannot see; a closed socket; a thread we do not recognise) falls back to the original sleep.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import association as _association
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import dul as _dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

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


class _TimeShim:
    """Stands in for the ``time`` module inside one pynetdicom module: everything is the real
    ``time`` but ``sleep``, which subclasses replace."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _DulTime(_TimeShim):
    """``time`` inside pynetdicom.dul."""

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


class _AssociationTime(_TimeShim):
    """``time`` inside pynetdicom.association."""

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        if seconds != _REACTOR_POLL or not isinstance(thread, Association) or thread._kill:
            time.sleep(seconds)
            return
        if not thread._reactor_checkpoint.is_set():
            return  # a send_*() wants the reactor paused: get there at once
        messages = thread.dimse.msg_queue
        with messages.not_empty:
            if not messages._qsize():
                messages.not_empty.wait(IDLE_WAIT)
            if messages._qsize():
                # Queue.put wakes a single waiter. A send_*() in get_msg(block=True) may wait on
                # the same condition; we do not take the message, so pass the wake-up on.
                messages.not_empty.notify()


_SHORT_VRS = {"UI": b"\x00", "SH": b" ", "AE": b" "}


def encode_file_meta(meta: Dataset) -> bytes | None:
    """Group 0002 in Explicit VR Little Endian with its group length, or None when an element
    is of a kind this encoder does not handle (the caller then uses pydicom's writer)."""
    body = bytearray()
    for element in meta:
        tag = element.tag
        if tag == 0x00020000:
            continue
        value = element.value
        if element.VR in _SHORT_VRS and isinstance(value, str):
            raw = value.encode("ascii")
            if len(raw) % 2:
                raw += _SHORT_VRS[element.VR]
            body += struct.pack("<HH2sH", tag.group, tag.elem, element.VR.encode(), len(raw)) + raw
        elif element.VR == "OB" and isinstance(value, bytes):
            raw = value + (b"\x00" if len(value) % 2 else b"")
            body += struct.pack("<HH2sHL", tag.group, tag.elem, b"OB", 0, len(raw)) + raw
        else:
            return None
    return struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body)) + bytes(body)


def _write_file_meta_info(fp: BinaryIO, file_meta: Dataset, enforce_standard: bool = True) -> None:
    encoded = encode_file_meta(file_meta)
    if encoded is None:
        write_file_meta_info(fp, file_meta, enforce_standard=enforce_standard)  # type: ignore[arg-type]
    else:
        fp.write(encoded)


def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` with large reads; same contract (short on a closed peer)."""
    raw = self.socket
    assert raw is not None
    buffer = bytearray(nr_bytes)
    read = 0
    with memoryview(buffer) as view:
        while read < nr_bytes:
            got = raw.recv_into(view[read:], nr_bytes - read)
            if not got:
                break
            read += got
    if read < nr_bytes:
        del buffer[read:]
    return buffer


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
        UID.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]
        AssociationSocket.recv = _recv  # type: ignore[method-assign]
        _dimse_messages.write_file_meta_info = _write_file_meta_info  # type: ignore[attr-defined]
        _dul.time = _DulTime()  # type: ignore[assignment]
        _association.time = _AssociationTime()  # type: ignore[assignment]
        _installed = True
