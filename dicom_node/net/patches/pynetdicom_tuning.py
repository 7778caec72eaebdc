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
(pydicom's general writer validates and re-encodes, ~0.3 ms a file on the hot path; building
the pydicom FileMetaDataset it would encode costs as much again), and encodes DIMSE command
sets (group 0000, Implicit VR Little Endian) directly: pynetdicom encodes every outgoing command
set twice through pydicom's writer, once to learn its group length. Both encoders handle exactly
the elements pynetdicom puts there and defer to pydicom otherwise, and tests pin their output
to pydicom's, byte for byte. C-STORE requests and responses skip pydicom Datasets altogether
(``store_messages``), and P-DATA-TF PDUs go to DIMSE without pynetdicom's copies (``p_data``).

Both waits are capped (``IDLE_WAIT``), so timers (ARTIM, idle timeout) and kill flags are
still seen promptly. A TLS socket that holds decrypted bytes ``select`` cannot see (``pending()``)
is not waited on at all; anything unusual (a closed socket, a thread we do not recognise) falls
back to the original sleep.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import association as _association
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import dsutils as _dsutils
from pynetdicom import dul as _dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket
from pynetdicom.utils import set_uid

from . import acceptor_wait, dimse_receive, p_data, reactor_handover, store_messages
from .store_messages import encode_command_set

log = logging.getLogger(__name__)

#: Longest a reactor thread waits before re-checking its timers and flags.
IDLE_WAIT = 0.005

_REACTOR_POLL = 0.001  # the reactor's own per-loop sleep in pynetdicom 2.x/3.x
_WAKER_ATTR = "_dicom_node_waker"
_installed = False
_install_lock = threading.Lock()
_fixes_lock = threading.Lock()


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
        if raw is None or raw.fileno() < 0:
            time.sleep(seconds)
            return
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return  # bytes already decrypted and buffered: select() on the descriptor cannot see them
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
_original_encode = _dsutils.encode
_original_create_file_meta = _dsutils.create_file_meta


def _encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
    """``pynetdicom.dsutils.encode`` as dimse_messages uses it (command sets only)."""
    if is_implicit_vr and is_little_endian and not deflated:
        encoded = encode_command_set(ds)
        if encoded is not None:
            return encoded
    return _original_encode(ds, is_implicit_vr, is_little_endian, deflated)


@dataclass(frozen=True, slots=True)
class _StreamedFileMeta:
    """What ``create_file_meta`` is given for a streamed C-STORE file, encoded only when written."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    implementation_uid: str
    implementation_version: str

    def dataset(self) -> Dataset:
        return _original_create_file_meta(
            sop_class_uid=set_uid(self.sop_class_uid, "SOP Class UID"),
            sop_instance_uid=set_uid(self.sop_instance_uid, "SOP Instance UID"),
            transfer_syntax=set_uid(self.transfer_syntax, "Transfer Syntax UID"),
            implementation_uid=set_uid(self.implementation_uid, "Implementation Class UID"),
            implementation_version=self.implementation_version,
        )

    def encode(self) -> bytes | None:
        body = bytearray(struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01")
        for elem, vr, value in ((0x0002, "UI", self.sop_class_uid), (0x0003, "UI", self.sop_instance_uid),
                                (0x0010, "UI", self.transfer_syntax), (0x0012, "UI", self.implementation_uid),
                                (0x0013, "SH", self.implementation_version)):
            if not value:
                continue
            encoded = _meta_text_element(elem, vr, value)
            if encoded is None:
                return None
            body += encoded
        return struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body)) + bytes(body)


def _meta_text_element(elem: int, vr: str, value: str) -> bytes | None:
    """One short-VR text element of group 0002 (Explicit VR LE), None if not plain ASCII."""
    if not value.isascii():
        return None
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += _SHORT_VRS[vr]
    return struct.pack("<HH2sH", 0x0002, elem, vr.encode(), len(raw)) + raw


def _create_file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                      implementation_uid: str = _dsutils.PYNETDICOM_IMPLEMENTATION_UID,
                      implementation_version: str = _dsutils.PYNETDICOM_IMPLEMENTATION_VERSION) -> _StreamedFileMeta:
    """``create_file_meta`` as dimse_messages uses it: straight into ``write_file_meta_info``."""
    return _StreamedFileMeta(str(sop_class_uid), str(sop_instance_uid), str(transfer_syntax),
                             str(implementation_uid), str(implementation_version or ""))


def encode_file_meta(meta: Dataset) -> bytes | None:
    """Group 0002 in Explicit VR Little Endian with its group length, or None when an element
    is of a kind this encoder does not handle (the caller then uses pydicom's writer)."""
    body = bytearray()
    for element in meta:
        tag = element.tag
        if tag == 0x00020000:
            continue
        value = element.value
        if element.VR in _SHORT_VRS and isinstance(value, str) and tag.group == 0x0002:
            encoded = _meta_text_element(tag.elem, element.VR, value)
            if encoded is None:
                return None
            body += encoded
        elif element.VR == "OB" and isinstance(value, bytes):
            raw = value + (b"\x00" if len(value) % 2 else b"")
            body += struct.pack("<HH2sHL", tag.group, tag.elem, b"OB", 0, len(raw)) + raw
        else:
            return None
    return struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body)) + bytes(body)


def _write_file_meta_info(fp: BinaryIO, file_meta: Dataset | _StreamedFileMeta, enforce_standard: bool = True) -> None:
    if isinstance(file_meta, _StreamedFileMeta):
        encoded = file_meta.encode()
        if encoded is not None:
            fp.write(encoded)
            return
        file_meta = file_meta.dataset()
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
    with memoryview(buffer) as view:
        read = p_data.recv_into(raw, view)
    if read < nr_bytes:
        del buffer[read:]
    return buffer


#: pynetdicom releases whose internals these replacements were written and tested against.
SUPPORTED_PYNETDICOM = ("3.0.",)
#: Set to "0" / "off" to keep pynetdicom's own code paths (``node.fast_paths: false`` likewise).
SWITCH_ENV = "DICOM_NODE_FAST_PATHS"

_originals: dict[str, Any] = {}


def supported(version: str | None = None) -> bool:
    """Whether the installed pynetdicom is one these replacements were tested against."""
    import pynetdicom

    return (version or pynetdicom.__version__).startswith(SUPPORTED_PYNETDICOM)


def switched_off() -> bool:
    return os.environ.get(SWITCH_ENV, "").strip().lower() in ("0", "off", "false", "no")


def install() -> bool:
    """Patch pynetdicom once per process (idempotent); False (and pynetdicom's own code) when
    the installed pynetdicom is not a tested release or the switch is off.

    The exact send/reactor hand-over (``reactor_handover``) is installed whatever the switch
    says: it fixes a race pynetdicom's own code has too, which our faster waits only made
    frequent."""
    global _installed
    with _install_lock:
        install_fixes()
        if _installed:
            return True
        if switched_off():
            log.info("pynetdicom fast paths off (%s)", SWITCH_ENV)
            return False
        if not supported():
            import pynetdicom

            log.warning("pynetdicom %s is not a release the listener's fast paths were tested against (%s): "
                        "using pynetdicom's own code paths", pynetdicom.__version__, ", ".join(SUPPORTED_PYNETDICOM))
            return False
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

        _originals.update(send_pdu=original_send_pdu, run_reactor=original_run, recv=AssociationSocket.recv,
                          write_file_meta_info=_dimse_messages.write_file_meta_info,
                          create_file_meta=_dimse_messages.create_file_meta, encode=_dimse_messages.encode,
                          dul_time=_dul.time, association_time=_association.time,
                          uid_deepcopy=UID.__dict__.get("__deepcopy__"))
        DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]
        DULServiceProvider.run_reactor = run_reactor  # type: ignore[method-assign]
        UID.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]
        AssociationSocket.recv = _recv  # type: ignore[method-assign]
        _dimse_messages.write_file_meta_info = _write_file_meta_info  # type: ignore[attr-defined]
        _dimse_messages.create_file_meta = _create_file_meta  # type: ignore[attr-defined]
        _dimse_messages.encode = _encode  # type: ignore[attr-defined]
        _dul.time = _DulTime()  # type: ignore[assignment]
        _association.time = _AssociationTime()  # type: ignore[assignment]
        store_messages.install()
        p_data.install(fast=True)
        _installed = True
        return True


def install_fixes() -> None:
    """What every process that makes associations needs, fast paths or not (idempotent): the
    exact send/reactor hand-over, the PDU reader that refuses over-long announced lengths,
    DIMSE reception that answers or aborts every request it cannot serve (``dimse_receive``),
    and an acceptor that stops waiting for a request from a connection already gone
    (``acceptor_wait``)."""
    with _fixes_lock:
        if not supported():
            import pynetdicom

            log.warning("pynetdicom %s is not a release the listener's fixes were tested against (%s): not installed; "
                        "oversized PDUs, unanswerable requests and half-open connections are left to pynetdicom",
                        pynetdicom.__version__, ", ".join(SUPPORTED_PYNETDICOM))
            return
        acceptor_wait.install()
        reactor_handover.install()
        p_data.install()
        dimse_receive.install()


def uninstall() -> None:
    """pynetdicom's own code paths again (for associations started from now on): what the
    differential tests compare the fast paths against. The bounded PDU reader and the exact
    reactor hand-over stay: they are fixes, not speed-ups."""
    global _installed
    with _install_lock:
        if not _installed:
            return
        DULServiceProvider.send_pdu = _originals["send_pdu"]  # type: ignore[method-assign]
        DULServiceProvider.run_reactor = _originals["run_reactor"]  # type: ignore[method-assign]
        if _originals["uid_deepcopy"] is None:
            del UID.__deepcopy__  # type: ignore[attr-defined]
        else:
            UID.__deepcopy__ = _originals["uid_deepcopy"]  # type: ignore[attr-defined]
        AssociationSocket.recv = _originals["recv"]  # type: ignore[method-assign]
        _dimse_messages.write_file_meta_info = _originals["write_file_meta_info"]  # type: ignore[attr-defined]
        _dimse_messages.create_file_meta = _originals["create_file_meta"]  # type: ignore[attr-defined]
        _dimse_messages.encode = _originals["encode"]  # type: ignore[attr-defined]
        _dul.time = _originals["dul_time"]  # type: ignore[assignment]
        _association.time = _originals["association_time"]  # type: ignore[assignment]
        store_messages.uninstall()
        p_data.install(fast=False)
        _originals.clear()
        _installed = False


def installed() -> bool:
    """Whether the fast paths are in place in this process."""
    return _installed
