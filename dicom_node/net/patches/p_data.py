"""P-DATA-TF PDUs received during data transfer, handed straight to DIMSE.

pynetdicom copies each PDU five times on its way in (into a bytearray, into bytes, into the
PDU's item and value slices), then passes it through two queues and its state machine, whose
only action for it (Sta6 + Evt10, DT-2) is to give the same P-DATA to DIMSE and stay in Sta6.
For a 512x512 CT slice that is five 128 KiB PDUs. ``_read_pdu_data`` reads the PDU into a
buffer its association reuses and gives DIMSE its PDVs as views of it, as DT-2 would
(``store_messages`` writes them to the instance's file, or turns them into bytes for
pynetdicom's own decoder).

Every other PDU, any other state, and any association with handlers for the raw PDU events
(``serve --verbose``) take pynetdicom's own path; the errors, log lines and state machine
events are the ones pynetdicom gives.

Every PDU, on either path and in every state, is first checked against ``pdu_limit``: the
length a peer announces never sizes a buffer. pynetdicom (and the tuned ``recv``) allocate what
the header says, so four connections announcing 4 GiB each before any association took the
node to 7 GB and deaf; now such a PDU is refused unread (A-ABORT, one ERROR line).
"""

from __future__ import annotations

import struct
import time
from typing import Any

from pynetdicom import dul as _dul
from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA

_PDU_TYPES = frozenset(range(1, 8))
_P_DATA_TF = 0x04
_PDU_NAMES = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF", 5: "A-RELEASE-RQ",
              6: "A-RELEASE-RP", 7: "A-ABORT"}
#: Events whose handlers expect pynetdicom's PDU objects and state machine steps.
_PDU_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION, evt.EVT_DIMSE_RECV)
_BUFFER_ATTR = "_dicom_node_pdu_buffer"
_REFUSED_ATTR = "_dicom_node_refused"

#: What a P-DATA-TF may carry beyond the maximum length we advertised (PS3.8 D.1 counts the
#: PDU's variable field; a few senders count a header more or less).
P_DATA_MARGIN = 64 * 1024
#: The most a P-DATA-TF may announce where we advertised no maximum (0, "unlimited").
UNLIMITED_P_DATA_CAP = 64 * 2**20
#: The most any other PDU may announce: an A-ASSOCIATE-RQ with 128 presentation contexts of
#: many transfer syntaxes and a user identity token is well under this; the rest are 4 bytes.
OTHER_PDU_CAP = 2**20
#: A PDU must be complete this long after its first byte (config node.pdu_timeout_seconds).
PDU_DEADLINE_SECONDS = 60.0

_fast = False


def pdu_limit(dul: Any, pdu_type: int) -> int:
    """The most bytes a PDU of this type may announce on this association: a P-DATA-TF the
    maximum length this side advertised (or would advertise) plus a margin, anything else
    ``OTHER_PDU_CAP``. A longer announced length is refused before a byte of it is read."""
    if pdu_type != _P_DATA_TF:
        return OTHER_PDU_CAP
    assoc = dul.assoc
    local = assoc.requestor if assoc.is_requestor else assoc.acceptor
    advertised = getattr(local, "maximum_length", None)
    if advertised is None:
        advertised = assoc.ae.maximum_pdu_size
    if not advertised:
        return UNLIMITED_P_DATA_CAP
    return int(advertised) + P_DATA_MARGIN


def _refuse_connection(dul: Any) -> None:
    """A-ABORT (Evt19) now; the connection's next read closes it without reading."""
    setattr(dul, _REFUSED_ATTR, True)
    dul.event_queue.put("Evt19")


def peer_name(assoc: Any) -> str:
    """'AE_TITLE@host:port' of the association's peer, as much of it as is known."""
    remote = assoc.acceptor if assoc.is_requestor else assoc.requestor
    ae_title = ""
    try:
        ae_title = str(remote.ae_title or "").strip()
    except (AttributeError, ValueError):
        pass
    try:
        where = f"{remote.address}:{remote.port}"
    except (AttributeError, ValueError):
        where = "?"
    return f"{ae_title}@{where}" if ae_title else where


def _read_pdu_data(self: Any) -> None:
    """``DULServiceProvider._read_pdu_data`` with the PDU's announced length checked before any
    of it is read (a peer's length never sizes a buffer), and, on the fast path, a P-DATA-TF
    received during data transfer handed straight to DIMSE as the state machine's DT-2 would.

    Everything else (errors, log lines, events) is what pynetdicom's reader does."""
    assoc = self.assoc
    if getattr(self, _REFUSED_ATTR, False):
        # We already refused a PDU on this connection and sent A-ABORT: whatever else comes is
        # not read (it would be parsed as PDU after PDU of garbage, an ERROR line each).
        self.event_queue.put("Evt17")
        return
    # A PDU must be whole within PDU_DEADLINE_SECONDS of its first byte: a peer that sends a byte
    # every 50 s would otherwise hold its association (and a slot) for ever, each byte resetting
    # the network timeout.
    deadline = time.monotonic() + PDU_DEADLINE_SECONDS
    try:
        header = _read(self, 6, deadline)
    except PduTooSlow as exc:
        _too_slow(self, exc)
        return
    except (OSError, TimeoutError, AttributeError) as exc:  # AttributeError: socket already closed
        _dul.LOGGER.error("Connection from %s closed before the entire PDU was received: %s", peer_name(assoc), exc)
        self.event_queue.put("Evt17")
        return
    if len(header) != 6:
        self.event_queue.put("Evt17")
        return
    pdu_type, _reserved, pdu_length = struct.unpack(">BBL", header)
    if pdu_type not in _PDU_TYPES:
        _dul.LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}' from {peer_name(assoc)}: aborting the "
                          "association")
        _refuse_connection(self)
        return
    limit = pdu_limit(self, pdu_type)
    if pdu_length > limit:
        _dul.LOGGER.error(f"Refused a {_PDU_NAMES[pdu_type]} PDU from {peer_name(assoc)} announcing {pdu_length} bytes "
                          f"(at most {limit} accepted here): aborting the association unread")
        _refuse_connection(self)
        return
    fast = (_fast and pdu_type == _P_DATA_TF and self.state_machine.current_state == "Sta6"
            and self.event_queue.empty() and self._recv_pdu.empty()
            and not any(assoc.get_handlers(event) for event in _PDU_EVENTS))
    if not fast:
        try:
            body: Any = _read(self, pdu_length, deadline)
        except PduTooSlow as exc:
            _too_slow(self, exc)
            return
        received = len(body)
    else:
        body = getattr(self, _BUFFER_ATTR, None)
        if body is None or len(body) < pdu_length:
            body = bytearray(pdu_length)
            setattr(self, _BUFFER_ATTR, body)
        try:
            received = recv_into(self.socket.socket, memoryview(body)[:pdu_length], deadline)
        except PduTooSlow as exc:
            _too_slow(self, exc)
            return
        except (OSError, TimeoutError, AttributeError) as exc:  # AttributeError: socket already closed
            _dul.LOGGER.error("Connection closed before the entire PDU was received")
            _dul.LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
    if received != pdu_length:
        _dul.LOGGER.error(f"The received PDU is shorter than expected ({6 + received} of {6 + pdu_length} bytes received)")
        self.event_queue.put("Evt17")
        return
    if fast:
        pdvs = _split_pdvs(memoryview(body)[:pdu_length])
        if pdvs is not None:
            primitive = P_DATA()
            primitive._presentation_data_value_list = pdvs  # views, which the setter refuses
            try:
                assoc.dimse.receive_primitive(primitive)
            except Exception as exc:  # as do_action treats an exception in DT-2
                _dul.LOGGER.error("State Machine received an exception attempting to perform the action "
                                  "'DT-2' while in state 'Sta6'")
                _dul.LOGGER.exception(exc)
                self.kill_dul()
            return
        body = bytes(body[:pdu_length])  # malformed items: pynetdicom's decoder says what is wrong
    try:
        pdu, event = self._decode_pdu(header + body)
        if header[0] == 0x01:
            # What the state machine's AE-6 does next, here, where a failure is one log line and an
            # A-ABORT: there it kills the DUL thread with a traceback (an even presentation
            # context ID decodes but cannot become a primitive; found by tests/support/fuzz.py).
            pdu.to_primitive()
        self.event_queue.put(event)
    except Exception as exc:  # a malformed PDU: one line naming it and the peer, then Evt19 (abort)
        _dul.LOGGER.error("Unable to decode a %s PDU (%d bytes) from %s: %s: %s; aborting the association",
                          _PDU_NAMES.get(header[0], f"0x{header[0]:02X}"), len(body), peer_name(assoc),
                          type(exc).__name__, exc)
        self.event_queue.put("Evt19")
        return
    self._recv_pdu.put(pdu)


class PduTooSlow(TimeoutError):
    """A PDU still incomplete PDU_DEADLINE_SECONDS after its first byte."""


def recv_into(sock: Any, view: memoryview, deadline: float | None = None) -> int:
    """Fill ``view`` from ``sock``; the count read (short only when the peer closed).
    ``deadline`` (monotonic): PduTooSlow when it passes with bytes still to come."""
    read, wanted = 0, len(view)
    while read < wanted:
        got = sock.recv_into(view[read:], wanted - read)
        if not got:
            break
        read += got
        if deadline is not None and read < wanted and time.monotonic() > deadline:
            raise PduTooSlow(f"{read} of {wanted} bytes {PDU_DEADLINE_SECONDS:.0f} s after the PDU began")
    return read


def _read(dul: Any, size: int, deadline: float) -> bytes:
    """``size`` bytes from the association's socket (fewer only when the peer closed)."""
    buffer = bytearray(size)
    read = recv_into(dul.socket.socket, memoryview(buffer), deadline)
    del buffer[read:]
    return bytes(buffer)


def _too_slow(dul: Any, exc: PduTooSlow) -> None:
    _dul.LOGGER.error("A PDU from %s arrives too slowly (%s): aborting the association", peer_name(dul.assoc), exc)
    _refuse_connection(dul)


def _split_pdvs(body: memoryview) -> list[tuple[int, memoryview]] | None:
    """The (context ID, value) of each PDV item of a P-DATA-TF body, or None if malformed."""
    pdvs = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            return None
        (length,) = struct.unpack_from(">L", body, offset)
        if length < 2 or offset + 4 + length > end:
            return None
        pdvs.append((body[offset + 4], body[offset + 5:offset + 4 + length]))
        offset += 4 + length
    return pdvs or None


def install(fast: bool | None = None) -> None:
    """Read every PDU with ``_read_pdu_data`` (bounded); ``fast``: P-DATA-TF straight to DIMSE
    (None: leave that as it is)."""
    global _fast
    if fast is not None:
        _fast = fast
    _dul.DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]
