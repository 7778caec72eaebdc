"""P-DATA into DIMSE messages: every request answered or its association aborted, out loud.

``DIMSEServiceProvider.receive_primitive`` as pynetdicom 3.0 writes it, with two changes:

* **Message boundaries inside a P-DATA.** PS3.8 lets one P-DATA-TF carry PDVs of more than one
  message (the last fragment of one data set and the next command, say). pynetdicom's decoder
  returns as soon as a message is complete and the PDVs after it are lost: a request that was
  never answered. Here the PDV list is cut after each PDV that ends a command or a data set,
  and each part goes to the decoder in turn.
* **A disk that fills during a data set is answered, not aborted.** The write fails with ENOSPC
  (or EDQUOT) while the data set is streamed to its temporary file: what was written is
  removed, the rest of the data set is read and dropped, and the request is answered 0xA700
  (Out of Resources), which a sender retries on.
* **A request that cannot become a primitive is answered.** pynetdicom logs "Received an invalid
  DIMSE message" and aborts the association, naming neither the peer nor the message (a
  65-character UID does this). Here a C-STORE or C-ECHO request whose command set was read is
  answered with 0xC210 and an Error Comment that says why; any other is aborted; either way an
  ERROR line names the peer, the Message ID and the reason, and a data set already spooled to
  a temporary file is removed.

A command set that cannot be read at all (no Message ID to answer) aborts the association with
the same ERROR line, instead of the bare traceback of the state machine.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from io import BytesIO
from typing import Any

from pydicom.uid import UID
from pynetdicom import association as _association
from pynetdicom import dimse as _dimse
from pynetdicom import evt
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_STORE, N_EVENT_REPORT
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import make_target

from .p_data import peer_name

log = logging.getLogger(__name__)

_original_receive_primitive = _dimse.DIMSEServiceProvider.receive_primitive
_original_kill = _association.Association.kill
#: Status answered to a request that could not be read as one: "Error: Cannot understand".
CANNOT_UNDERSTAND = 0xC210
_RESPONSES = {"C-STORE-RQ": C_STORE, "C-ECHO-RQ": C_ECHO}
#: "Refused: Out of Resources", answered when the disk fills during a data set.
OUT_OF_RESOURCES = 0xA700
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
#: On the DIMSE provider: the C-STORE whose data set is being read past and dropped.
_DRAINING_ATTR = "_dicom_node_draining"


def message_parts(pdvs: list[tuple[int, Any]]) -> list[list[tuple[int, Any]]]:
    """The PDV list cut after each PDV that is the last fragment of a command set or a data set
    (control header bit 1), so no part holds the end of one message and more after it."""
    parts, start = [], 0
    for number, (_context, data) in enumerate(pdvs):
        if data[0] & 2 and number + 1 < len(pdvs):
            parts.append(pdvs[start:number + 1])
            start = number + 1
    parts.append(pdvs[start:])
    return parts


def receive_primitive(self: Any, primitive: P_DATA) -> None:
    """``DIMSEServiceProvider.receive_primitive``, one message's PDVs at a time."""
    parts = message_parts(primitive.presentation_data_value_list)
    if len(parts) == 1:
        _receive_message_part(self, primitive)
        return
    for part in parts:
        piece = P_DATA()
        piece._presentation_data_value_list = part  # views from p_data, which the setter refuses
        if not _receive_message_part(self, piece):
            return  # the association is being aborted: the rest is not read


def _receive_message_part(self: Any, primitive: P_DATA) -> bool:
    """Decode one message's PDVs; False when the association is being aborted."""
    draining = getattr(self, _DRAINING_ATTR, None)
    if draining is not None:  # the rest of a data set there was no room for: read, not kept
        if _ends_data_set(primitive):
            setattr(self, _DRAINING_ATTR, None)
            _answer_out_of_space(self, *draining)
        return True
    if self.message is None:
        self.message = DIMSEMessage()
    message = self.message
    try:
        complete = message.decode_msg(primitive, self.assoc)
    except OSError as exc:
        if exc.errno in _DISK_FULL and _is_store_request(message):
            return _out_of_space(self, message, primitive, exc)
        return _refuse(self, message, None, f"the message could not be read ({type(exc).__name__}: {exc})")
    except Exception as exc:
        return _refuse(self, message, None, f"the message could not be read ({type(exc).__name__}: {exc})")
    if not complete:
        return True
    evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
    context_id = message.context_id
    try:
        d_primitive = message.message_to_primitive()
    except Exception as exc:
        return _refuse(self, message, context_id, str(exc))
    if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
        self.cancel_req[d_primitive.MessageIDBeingRespondedTo] = d_primitive
    elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
        # As pynetdicom: served at once in its own thread, which would otherwise block the DUL.
        threading.Thread(target=make_target(self.assoc._serve_request), args=(d_primitive, context_id)).start()
    else:
        self.msg_queue.put((context_id, d_primitive))
    _reset(self, message)
    return True


def _ends_data_set(primitive: P_DATA) -> bool:
    """Whether a P-DATA holds the last fragment of a data set (control header: data, last)."""
    return any(data[0] & 3 == 2 for _context, data in primitive.presentation_data_value_list)


def _is_store_request(message: Any) -> bool:
    return _value(_command_set(message), "CommandField") == 0x0001  # C-STORE-RQ


def _out_of_space(self: Any, message: Any, primitive: P_DATA, exc: OSError) -> bool:
    """The disk filled while a C-STORE data set was being written (ENOSPC, EDQUOT): drop what
    was written, read the rest of the data set without keeping it, then answer 0xA700 (Out of
    Resources), so the sender gets a status it can retry on and nothing partial stays."""
    command = _command_set(message)
    details = (_value(command, "MessageID"), message.context_id, str(_value(command, "AffectedSOPClassUID") or ""),
               str(_value(command, "AffectedSOPInstanceUID") or ""), f"{os.strerror(exc.errno)} while receiving")
    _discard_spooled(message)
    _reset(self, message)
    if _ends_data_set(primitive):
        _answer_out_of_space(self, *details)
    else:
        setattr(self, _DRAINING_ATTR, details)
    return True


def _answer_out_of_space(self: Any, message_id: Any, context_id: int | None, sop_class: str, sop_instance: str,
                         why: str) -> None:
    assoc = self.assoc
    if message_id is None or context_id not in assoc._accepted_cx:
        log.error("C-STORE from %s: %s, and the request cannot be answered: aborting the association", peer_name(assoc), why)
        self.dul.event_queue.put("Evt19")
        return
    response = C_STORE()
    response.MessageIDBeingRespondedTo = int(message_id)
    if sop_class and len(sop_class) <= 64 and UID(sop_class).is_valid:
        response.AffectedSOPClassUID = sop_class
    if sop_instance and len(sop_instance) <= 64 and UID(sop_instance).is_valid:
        response.AffectedSOPInstanceUID = sop_instance
    response.Status = OUT_OF_RESOURCES
    response.ErrorComment = _error_comment(why)
    self.send_msg(response, context_id)
    log.error("C-STORE of %s from %s, Message ID %s, refused with 0x%04X: %s (nothing kept)", sop_instance or "?",
              peer_name(assoc), message_id, OUT_OF_RESOURCES, why)


def _reset(self: Any, message: Any) -> None:
    """What pynetdicom does once a message is handed on: ready for the next one (issue #41)."""
    message.encoded_command_set = BytesIO()
    message.data_set = BytesIO()
    message._data_set_file = None
    message._data_set_path = None
    self.message = None


def _refuse(self: Any, message: Any, context_id: int | None, why: str) -> bool:
    """Answer (C-STORE, C-ECHO: True) or abort (False), with one ERROR line; the message is dropped."""
    assoc = self.assoc
    command = _command_set(message)
    message_id = _value(command, "MessageID")
    kind = type(message).__name__.replace("_", "-")
    _discard_spooled(message)
    _reset(self, message)
    response_class = _RESPONSES.get(kind)
    if response_class is not None and message_id is not None and context_id in assoc._accepted_cx:
        response = response_class()
        response.MessageIDBeingRespondedTo = int(message_id)
        sop_class = str(_value(command, "AffectedSOPClassUID") or "")
        if sop_class and len(sop_class) <= 64 and UID(sop_class).is_valid:
            response.AffectedSOPClassUID = sop_class
        response.Status = CANNOT_UNDERSTAND
        response.ErrorComment = _error_comment(why)
        try:
            self.send_msg(response, context_id)
        except Exception as exc:  # the answer itself cannot be encoded: abort instead
            why = f"{why}; the failure response could not be sent ({exc})"
        else:
            log.error("%s from %s, Message ID %s, refused with 0x%04X: %s", kind, peer_name(assoc), message_id,
                      CANNOT_UNDERSTAND, why)
            return True
    log.error("%s from %s, Message ID %s, not served (%s): aborting the association", kind, peer_name(assoc),
              message_id if message_id is not None else "unknown", why)
    self.dul.event_queue.put("Evt19")  # AA-8: A-ABORT to the peer, then close
    return False


def _command_set(message: Any) -> Any:
    try:
        return message.command_set
    except Exception:  # a command set that pydicom cannot decode either
        return None


def _value(command: Any, keyword: str) -> Any:
    """An element of a command set that may be malformed; None where it cannot be read."""
    if command is None:
        return None
    try:
        return command.get(keyword)
    except Exception:  # a value of the wrong length, say: pydicom raises on access
        return None


def _discard_spooled(message: Any) -> None:
    """Remove a data set pynetdicom streamed to a temporary file for a message now dropped."""
    handle, path = getattr(message, "_data_set_file", None), getattr(message, "_data_set_path", None)
    if handle is not None:
        try:
            handle.close()
        except OSError:
            pass
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def _error_comment(why: str) -> str:
    """An Error Comment (LO: at most 64 characters of the default repertoire, no backslash);
    pynetdicom's "Invalid 'X' value 'V' - reason" loses the value, which the log line keeps."""
    why = re.sub(r"^Invalid '([^']*)' value '.*' - ", r"Invalid \1: ", why)
    text = "".join(ch if 32 <= ord(ch) < 127 and ch != "\\" else "?" for ch in why)
    return text if len(text) <= 64 else text[:61] + "..."


def _kill(self: Any) -> None:
    """Association.kill, then the data set of a message cut off by the association's end (a
    sender that died, aborted or timed out mid-instance) closed and removed. pynetdicom streams
    a C-STORE data set to a temporary file and closes and removes it only when the message
    completes, so a half-received one stayed open until garbage collection and on disk. Done
    once the DUL thread has ended, which alone writes to that file."""
    _original_kill(self)
    dul = getattr(self, "dul", None)
    if isinstance(dul, threading.Thread) and dul is not threading.current_thread():
        dul.join(timeout=5)
        if dul.is_alive():
            return  # still writing: leave the file to garbage collection rather than race it
    dimse = getattr(self, "dimse", None)
    message = getattr(dimse, "message", None)
    if message is not None and getattr(message, "_data_set_file", None) is not None:
        _discard_spooled(message)
        dimse.message = None


def install() -> None:
    _dimse.DIMSEServiceProvider.receive_primitive = receive_primitive  # type: ignore[method-assign]
    if _association.Association.kill is not _kill:
        _association.Association.kill = _kill  # type: ignore[method-assign]


def uninstall() -> None:
    _dimse.DIMSEServiceProvider.receive_primitive = _original_receive_primitive  # type: ignore[method-assign]
    # _kill stays: it is a fix (a half-received data set's file closed and removed), not a fast path.
