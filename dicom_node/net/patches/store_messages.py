"""C-STORE requests and responses read and written without building pydicom Datasets.

A profile of 1000 small C-STOREs (cProfile, every thread) put a quarter of the listener's Python
calls in pynetdicom's DIMSE machinery for these two messages: the request's command set goes
through pydicom's reader, then each element through pydicom's and pynetdicom's validators
(a UID is checked three times) into the C_STORE primitive; the response primitive is turned
into a command-set Dataset (70 ``Dataset.__setattr__`` calls per message) and encoded, twice,
to learn its group length. Both ends are tiny and fixed (PS3.7 9.3.1), so this module reads and
writes them directly:

* ``decode_store_request`` reads a C-STORE-RQ command set (Implicit VR Little Endian, group
  0000) into a ``StoreRequest``, or returns None for anything it does not fully understand
  (another command, an unknown element, a malformed UID or AE title, odd lengths); pynetdicom's
  own decoder then takes the message, with its error handling;
* ``encode_command_elements`` writes group-0000 elements, with the group length, or returns
  None for values it does not handle (pydicom then encodes them);
* ``store_response_command`` gives the C-STORE-RSP command set of a response primitive.

* ``_write_fragments`` appends a request's data set fragments to the instance's file without
  copying them first (``p_data`` hands them over as views of the received PDU), and starts the
  file's writeback.

``install`` hooks them into pynetdicom only where nobody listens to the raw messages (no
EVT_DIMSE_RECV / EVT_DIMSE_SENT handler: ``serve --verbose`` binds them, and then everything
goes pynetdicom's way). Tests pin both directions to pynetdicom's own results.
"""

from __future__ import annotations

import ctypes
import re
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config, evt
from pynetdicom import dimse as _dimse
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode as _pydicom_decode
from pynetdicom.pdu_primitives import P_DATA

C_STORE_RQ_FIELD = 0x0001
C_STORE_RSP_FIELD = 0x8001
NO_DATASET = 0x0101

#: A UID as PS3.5 9.1 allows it: digits and dots, no empty component, no leading zero.
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
#: An AE title value: up to 16 printable ASCII characters, no backslash (PS3.5 6.2).
_AE = re.compile(r"[ -\[\]-~]{0,16}")

_US, _UL, _UI, _AE_VR = "US", "UL", "UI", "AE"
#: C-STORE-RQ elements (PS3.7 table 9.3-1) by element number: keyword and VR.
_REQUEST_ELEMENTS: dict[int, tuple[str, str]] = {
    0x0000: ("CommandGroupLength", _UL),
    0x0002: ("AffectedSOPClassUID", _UI),
    0x0100: ("CommandField", _US),
    0x0110: ("MessageID", _US),
    0x0700: ("Priority", _US),
    0x0800: ("CommandDataSetType", _US),
    0x1000: ("AffectedSOPInstanceUID", _UI),
    0x1030: ("MoveOriginatorApplicationEntityTitle", _AE_VR),
    0x1031: ("MoveOriginatorMessageID", _US),
}
_TEXT_PADDING = {"UI": b"\x00", "AE": b" ", "LO": b" ", "SH": b" ", "CS": b" "}
_INT_FORMATS = {"US": "<HHLH", "UL": "<HHLL"}


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """The parameters of a C-STORE-RQ command set (the data set follows separately)."""

    message_id: int
    priority: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    move_originator_ae_title: str | None = None
    move_originator_message_id: int | None = None


def decode_store_request(raw: bytes) -> StoreRequest | None:
    """A C-STORE-RQ command set with a data set, or None for anything else or anything odd."""
    values: dict[str, Any] = {}
    offset, end = 0, len(raw)
    while offset < end:
        if end - offset < 8:
            return None
        group, elem, length = struct.unpack_from("<HHL", raw, offset)
        offset += 8
        known = _REQUEST_ELEMENTS.get(elem)
        if group != 0 or known is None or offset + length > end:
            return None
        keyword, vr = known
        if keyword in values:
            return None
        value = raw[offset:offset + length]
        offset += length
        if vr == _US or vr == _UL:
            if length != (2 if vr == _US else 4):
                return None
            values[keyword] = int.from_bytes(value, "little")
            continue
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return None
        if vr == _UI:
            text = text.rstrip("\x00 ")
            if len(text) > 64 or not _UID.fullmatch(text):
                return None
        else:
            text = text.strip()
            if not _AE.fullmatch(text):
                return None
        values[keyword] = text
    if values.get("CommandField") != C_STORE_RQ_FIELD or values.get("CommandDataSetType", NO_DATASET) == NO_DATASET:
        return None
    try:
        return StoreRequest(
            message_id=values["MessageID"],
            priority=values["Priority"],
            affected_sop_class_uid=values["AffectedSOPClassUID"],
            affected_sop_instance_uid=values["AffectedSOPInstanceUID"],
            move_originator_ae_title=values.get("MoveOriginatorApplicationEntityTitle") or None,
            move_originator_message_id=values.get("MoveOriginatorMessageID"),
        )
    except KeyError:
        return None  # a required element is missing: pynetdicom says what is wrong


def _uid(text: str) -> UID:
    """A pydicom UID for text this module has already checked (UID() would validate again)."""
    return str.__new__(UID, text)


def store_request_primitive(request: StoreRequest) -> C_STORE:
    """The C_STORE primitive pynetdicom's ``message_to_primitive`` builds for this request."""
    primitive = C_STORE()
    primitive.MessageID = request.message_id
    primitive.Priority = request.priority
    primitive._affected_sop_class_uid = _uid(request.affected_sop_class_uid)
    primitive._affected_sop_instance_uid = _uid(request.affected_sop_instance_uid)
    if request.move_originator_ae_title is not None:
        primitive.MoveOriginatorApplicationEntityTitle = request.move_originator_ae_title
    if request.move_originator_message_id is not None:
        primitive.MoveOriginatorMessageID = request.move_originator_message_id
    return primitive


def encode_command_elements(elements: Iterable[tuple[int, str, Any]]) -> bytes | None:
    """Group-0000 elements ``(element number, VR, value)``, in tag order, encoded Implicit VR
    Little Endian as pydicom writes them; None when a value is not one this encoder handles
    (multi-valued, non-ASCII, out of range, another VR): pydicom then does it."""
    out = bytearray()
    for elem, vr, value in elements:
        if value is None or value == "":
            out += struct.pack("<HHL", 0, elem, 0)
        elif vr in _INT_FORMATS and type(value) is int:
            try:
                out += struct.pack(_INT_FORMATS[vr], 0, elem, 2 if vr == _US else 4, value)
            except struct.error:
                return None  # out of range: let pydicom say so
        elif vr in _TEXT_PADDING and isinstance(value, str) and value.isascii() and "\\" not in value:
            raw = value.encode("ascii")
            if len(raw) % 2:
                raw += _TEXT_PADDING[vr]
            out += struct.pack("<HHL", 0, elem, len(raw)) + raw
        else:
            return None
    return bytes(out)


def encode_command_set(ds: Dataset) -> bytes | None:
    """A command-set Dataset encoded as pydicom would, or None (see encode_command_elements)."""
    elements = []
    for element in ds:
        if element.tag.group != 0:
            return None
        elements.append((element.tag.elem, element.VR, element.value))
    return encode_command_elements(elements)


def store_response_command(rsp: C_STORE) -> bytes | None:
    """The encoded C-STORE-RSP command set (group length first) of a response primitive, as
    pynetdicom would send it; None for what this module leaves to pynetdicom (an Offending
    Element, values it does not encode)."""
    if rsp.OffendingElement is not None or rsp.Status is None:
        return None
    present = [(elem, vr, value) for elem, vr, value in (
        (0x0002, _UI, rsp.AffectedSOPClassUID),
        (0x0100, _US, C_STORE_RSP_FIELD),
        (0x0120, _US, rsp.MessageIDBeingRespondedTo),
        (0x0800, _US, NO_DATASET),
        (0x0900, _US, rsp.Status),
        (0x0902, "LO", rsp.ErrorComment),
        (0x1000, _UI, rsp.AffectedSOPInstanceUID),
    ) if value is not None]
    body = encode_command_elements(present)
    if body is None:
        return None
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


class _DecodedStoreRequest(_dimse_messages.C_STORE_RQ):  # type: ignore[misc]
    """A C-STORE-RQ message whose command set was read by ``decode_store_request``; its
    pydicom ``command_set`` is decoded only if someone asks for it."""

    request: StoreRequest
    encoded: bytes
    writeback: bool = False

    @property  # type: ignore[override]
    def command_set(self) -> Dataset:
        cached = self.__dict__.get("_command_set_ds")
        if cached is None:
            cached = self.__dict__["_command_set_ds"] = _pydicom_decode(BytesIO(self.encoded), True, True)
        return cached

    @command_set.setter
    def command_set(self, value: Dataset) -> None:
        self.__dict__["_command_set_ds"] = value

    def message_to_primitive(self) -> C_STORE:
        primitive = store_request_primitive(self.request)
        primitive.DataSet = self.data_set
        primitive._context_id = self.context_id
        primitive._dataset_path = self._data_set_path
        primitive._dataset_file = self._data_set_file
        return primitive


def _load_sync_file_range() -> Any:
    """Linux's ``sync_file_range`` (not in ``os``), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _write_fragments(message: _DecodedStoreRequest, pdvs: list[tuple[int, bytes]]) -> bool | None:
    """Data set fragments of a C-STORE-RQ appended to its file, as pynetdicom's ``decode_msg``
    does but without copying each fragment first; True once the last one is written, None
    when a PDV is not a data set fragment (pynetdicom then takes the P-DATA).

    Where the receiving AE asks for it (``start_writeback``: the store fsyncs every file), the
    kernel is told to start writing the file out now (``sync_file_range`` WRITE, which does not
    wait), so the disk works while the rest of the instance is still arriving and the fsync
    before the acknowledgement has less left to wait for."""
    if any(data[0] & 1 for _context, data in pdvs):
        return None
    handle = message._data_set_file.file
    done = False
    for _context, data in pdvs:
        with memoryview(data) as view:
            handle.write(view[1:])
        if data[0] & 2:
            done = True
            break
    handle.flush()
    if message.writeback and _sync_file_range is not None:
        _sync_file_range(handle.fileno(), 0, 0, _SYNC_FILE_RANGE_WRITE)
    return done


def _open_dataset_file(message: _DecodedStoreRequest, assoc: Any, context_id: int) -> None:
    """What pynetdicom's ``decode_msg`` does once a C-STORE-RQ command set is complete and
    datasets are received in chunks: a temporary file, its preamble and File Meta."""
    handle = _dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    message._data_set_file = handle
    message._data_set_path = Path(handle.name)
    message.writeback = bool(getattr(assoc.ae, "start_writeback", False))
    handle.write(b"\x00" * 128)
    handle.write(b"DICM")
    _dimse_messages.write_file_meta_info(handle, _dimse_messages.create_file_meta(
        sop_class_uid=message.request.affected_sop_class_uid,
        sop_instance_uid=message.request.affected_sop_instance_uid,
        transfer_syntax=assoc._accepted_cx[context_id].transfer_syntax[0],
    ))


_original_decode_msg = _dimse_messages.DIMSEMessage.decode_msg
_original_send_msg = _dimse.DIMSEServiceProvider.send_msg


def _decode_msg(self: Any, primitive: Any, assoc: Any = None) -> bool:
    """``DIMSEMessage.decode_msg``, reading a C-STORE-RQ command set that arrives whole in the
    first PDV of a P-DATA with ``decode_store_request`` and writing its data set fragments with
    ``_write_fragments``; everything else goes through pynetdicom's own code."""
    if type(primitive) is P_DATA:
        pdvs = primitive.presentation_data_value_list
        if _start_store_request(self, pdvs, assoc):
            if len(pdvs) == 1:
                return False
            primitive = P_DATA()
            primitive._presentation_data_value_list = pdvs = pdvs[1:]  # the setter wants lists
        if type(self) is _DecodedStoreRequest:
            done = _write_fragments(self, pdvs)
            if done is not None:
                return done
        primitive._presentation_data_value_list = _as_bytes(pdvs)
    return bool(_original_decode_msg(self, primitive, assoc))


def _start_store_request(message: Any, pdvs: list[tuple[int, Any]], assoc: Any) -> bool:
    """Whether the first PDV is a whole C-STORE-RQ command set that ``decode_store_request``
    reads, for a message not yet begun; if so ``message`` becomes a ``_DecodedStoreRequest``
    with its file open, as pynetdicom's chunked receive would have it."""
    if (type(message) is not _dimse_messages.DIMSEMessage or assoc is None or not pdvs
            or not _config.STORE_RECV_CHUNKED_DATASET or message.encoded_command_set.tell() != 0):
        return False
    context_id, data = pdvs[0]
    if (data[0] & 3) != 3 or context_id not in assoc._accepted_cx or assoc.get_handlers(evt.EVT_DIMSE_RECV):
        return False
    encoded = bytes(data[1:])
    request = decode_store_request(encoded)
    if request is None:
        return False
    message.__dict__.pop("command_set", None)
    message.__class__ = _DecodedStoreRequest
    message.request, message.encoded, message.context_id = request, encoded, context_id
    _open_dataset_file(message, assoc, context_id)
    return True


def _as_bytes(pdvs: list[tuple[int, Any]]) -> list[tuple[int, bytes]]:
    """PDVs as pynetdicom's own code expects them (``p_data`` hands out memoryviews)."""
    return [(context, data if type(data) is bytes else bytes(data)) for context, data in pdvs]


def _send_msg(self: Any, primitive: Any, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg``, writing a C-STORE-RSP with ``store_response_command``."""
    if (type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
        encoded = store_response_command(primitive)
        limit = self.maximum_pdu_size
        if encoded is not None and (not limit or len(encoded) + 6 <= limit):
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
            self.dul.send_pdu(pdata)
            return
    _original_send_msg(self, primitive, context_id)


def install() -> None:
    """Route C-STORE requests and responses through this module (idempotent)."""
    _dimse_messages.DIMSEMessage.decode_msg = _decode_msg  # type: ignore[method-assign]
    _dimse.DIMSEServiceProvider.send_msg = _send_msg  # type: ignore[method-assign]


def uninstall() -> None:
    """pynetdicom's own C-STORE message code again."""
    _dimse_messages.DIMSEMessage.decode_msg = _original_decode_msg  # type: ignore[method-assign]
    _dimse.DIMSEServiceProvider.send_msg = _original_send_msg  # type: ignore[method-assign]
