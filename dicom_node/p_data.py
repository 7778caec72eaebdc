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
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom import dul as _dul
from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA

_original_read_pdu_data = _dul.DULServiceProvider._read_pdu_data
_PDU_TYPES = frozenset(range(1, 8))
_P_DATA_TF = 0x04
#: Events whose handlers expect pynetdicom's PDU objects and state machine steps.
_PDU_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION, evt.EVT_DIMSE_RECV)
_BUFFER_ATTR = "_dicom_node_pdu_buffer"


def _read_pdu_data(self: Any) -> None:
    """``DULServiceProvider._read_pdu_data`` that hands a P-DATA-TF received during data
    transfer straight to DIMSE, as the state machine's DT-2 action would."""
    assoc = self.assoc
    if (self.state_machine.current_state != "Sta6" or not self.event_queue.empty() or not self._recv_pdu.empty()
            or any(assoc.get_handlers(event) for event in _PDU_EVENTS)):
        _original_read_pdu_data(self)
        return
    try:
        header = self.socket.recv(6)
    except (OSError, TimeoutError) as exc:
        _dul.LOGGER.error("Connection closed before the entire PDU was received")
        _dul.LOGGER.exception(exc)
        self.event_queue.put("Evt17")
        return
    if len(header) != 6:
        self.event_queue.put("Evt17")
        return
    pdu_type, _reserved, pdu_length = struct.unpack(">BBL", header)
    if pdu_type not in _PDU_TYPES:
        _dul.LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        self.event_queue.put("Evt19")
        return
    if pdu_type != _P_DATA_TF:
        body: Any = self.socket.recv(pdu_length)
        received = len(body)
    else:
        body = getattr(self, _BUFFER_ATTR, None)
        if body is None or len(body) < pdu_length:
            body = bytearray(pdu_length)
            setattr(self, _BUFFER_ATTR, body)
        try:
            received = recv_into(self.socket.socket, memoryview(body)[:pdu_length])
        except (OSError, TimeoutError, AttributeError) as exc:  # AttributeError: socket already closed
            _dul.LOGGER.error("Connection closed before the entire PDU was received")
            _dul.LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
    if received != pdu_length:
        _dul.LOGGER.error(f"The received PDU is shorter than expected ({6 + received} of {6 + pdu_length} bytes received)")
        self.event_queue.put("Evt17")
        return
    if pdu_type == _P_DATA_TF:
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
        self.event_queue.put(event)
    except Exception as exc:
        _dul.LOGGER.error("Unable to decode the received PDU data")
        _dul.LOGGER.exception(exc)
        self.event_queue.put("Evt19")
        return
    self._recv_pdu.put(pdu)


def recv_into(sock: Any, view: memoryview) -> int:
    """Fill ``view`` from ``sock``; the count read (short only when the peer closed)."""
    read, wanted = 0, len(view)
    while read < wanted:
        got = sock.recv_into(view[read:], wanted - read)
        if not got:
            break
        read += got
    return read


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


def install() -> None:
    """Read P-DATA-TF PDUs with ``_read_pdu_data`` (idempotent)."""
    _dul.DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]
