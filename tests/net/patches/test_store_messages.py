"""C-STORE command sets read and written directly: pinned to pynetdicom's own results, and used
(or not) by a real listener."""

from __future__ import annotations

import io
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.dsutils import decode, encode

from dicom_node.config import NodeConfig
from dicom_node.net.patches import store_messages
from dicom_node.service.node import Node
from dicom_node.tools.synthetic import write_ct_series

from ..test_storage_scp import assert_stored_unchanged, send

CT = "1.2.840.10008.5.1.4.1.1.2"


def command_set_of(message: str, **values: object) -> Dataset:
    """A command set as pynetdicom builds it for an outgoing message of type ``message``."""
    primitive = getattr(dimse_primitives, "_".join(message.split("_")[:2]))()
    for key, value in values.items():
        setattr(primitive, key, value)
    msg = getattr(dimse_messages, message)()
    msg.primitive_to_message(primitive)
    return msg.command_set


def request_bytes(**values: object) -> bytes:
    values = {"MessageID": 3, "AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": "1.2.3", "Priority": 2,
              "DataSet": io.BytesIO(b"\x08\x00\x18\x00\x00\x00\x00\x00"), **values}
    return bytes(encode(command_set_of("C_STORE_RQ", **values), True, True))


@pytest.mark.parametrize(
    ("message", "values"),
    [
        ("C_STORE_RSP", {"MessageIDBeingRespondedTo": 7, "AffectedSOPClassUID": CT,
                         "AffectedSOPInstanceUID": "1.2.3.4.5", "Status": 0x0000}),
        ("C_STORE_RSP", {"MessageIDBeingRespondedTo": 65535, "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.1.4",
                         "AffectedSOPInstanceUID": "9" * 64, "Status": 0xA700, "ErrorComment": "free space under the watermark"}),
        ("C_STORE_RQ", {"MessageID": 3, "AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": "1.2.3",
                        "Priority": 2, "MoveOriginatorApplicationEntityTitle": "MOVER", "MoveOriginatorMessageID": 9,
                        "DataSet": io.BytesIO(b"\x08\x00\x18\x00\x00\x00\x00\x00")}),
        ("C_ECHO_RSP", {"MessageIDBeingRespondedTo": 1, "AffectedSOPClassUID": "1.2.840.10008.1.1", "Status": 0}),
    ],
)
def test_command_set_encoding_equals_pydicom(message: str, values: dict[str, Any]) -> None:
    command_set = command_set_of(message, **values)
    assert store_messages.encode_command_set(command_set) == encode(command_set, True, True)


def test_unusual_command_sets_are_left_to_pydicom() -> None:
    command_set = command_set_of("C_STORE_RSP", MessageIDBeingRespondedTo=1, AffectedSOPClassUID="1.2.3",
                                 AffectedSOPInstanceUID="1.2.3.4", Status=0xC211, ErrorComment="caf\u00e9 ferm\u00e9")
    assert store_messages.encode_command_set(command_set) is None  # not ASCII: pydicom's character handling
    command_set.ErrorComment = "closed"
    command_set.add_new(0x00001005, "AT", [0x00100010, 0x00100020])  # Attribute Identifier List
    assert store_messages.encode_command_set(command_set) is None


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"MessageID": 65535, "Priority": 1, "AffectedSOPInstanceUID": "1.2.826.0.1.3680043.8.498.12345678901234567890"},
        {"AffectedSOPInstanceUID": "9" * 64, "Priority": 0},
        {"MoveOriginatorApplicationEntityTitle": "MOVE_SCU", "MoveOriginatorMessageID": 12},
        {"MoveOriginatorApplicationEntityTitle": "A"},  # odd length: padded with a space
    ],
)
def test_store_request_reads_as_pynetdicom_reads_it(values: dict[str, Any]) -> None:
    raw = request_bytes(**values)
    message = dimse_messages.C_STORE_RQ()
    message.command_set = decode(io.BytesIO(raw), True, True)
    reference = message.message_to_primitive()

    request = store_messages.decode_store_request(raw)
    assert request is not None
    primitive = store_messages.store_request_primitive(request)
    for name in ("MessageID", "Priority", "AffectedSOPClassUID", "AffectedSOPInstanceUID",
                 "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID", "MessageIDBeingRespondedTo", "Status"):
        assert getattr(primitive, name) == getattr(reference, name), name
        assert type(getattr(primitive, name)) is type(getattr(reference, name)), name
    assert isinstance(primitive.AffectedSOPInstanceUID, UID)
    assert primitive.AffectedSOPInstanceUID.is_valid


def _replace_element(raw: bytes, elem: int, value: bytes) -> bytes:
    """``raw`` with element (0000,elem) given ``value`` (group length left as it was)."""
    out, offset = bytearray(), 0
    while offset < len(raw):
        group, number, length = struct.unpack_from("<HHL", raw, offset)
        body = raw[offset + 8:offset + 8 + length]
        if number == elem:
            body = value
        out += struct.pack("<HHL", group, number, len(body)) + body
        offset += 8 + length
    return bytes(out)


@pytest.mark.parametrize(
    ("why", "mutate"),
    [
        ("a C-ECHO-RQ", lambda raw: bytes(encode(command_set_of("C_ECHO_RQ", MessageID=1, AffectedSOPClassUID="1.2.840.10008.1.1"), True, True))),
        ("no data set", lambda raw: _replace_element(raw, 0x0800, struct.pack("<H", 0x0101))),
        ("a UID component with a leading zero", lambda raw: _replace_element(raw, 0x1000, b"1.02.3\x00")),
        ("a UID with letters", lambda raw: _replace_element(raw, 0x1000, b"1.2.abc\x00")),
        ("a UID over 64 characters", lambda raw: _replace_element(raw, 0x1000, b"1." + b"2" * 64)),
        ("an empty SOP Instance UID", lambda raw: _replace_element(raw, 0x1000, b"")),
        ("non-ASCII text", lambda raw: _replace_element(raw, 0x0002, "1.2.\u00e9".encode("latin-1"))),
        ("a US of the wrong length", lambda raw: _replace_element(raw, 0x0110, b"\x01\x00\x00\x00")),
        ("an element C-STORE-RQ does not have", lambda raw: raw + struct.pack("<HHLH", 0, 0x0900, 2, 0)),
        ("an element twice", lambda raw: raw + struct.pack("<HHLH", 0, 0x0700, 2, 0)),
        ("another group", lambda raw: raw + struct.pack("<HHLH", 8, 0x0001, 2, 0)),
        ("a cut-off element", lambda raw: raw[:-3]),
        ("a missing Priority", lambda raw: _drop(raw, 0x0700)),
    ],
)
def test_anything_odd_is_left_to_pynetdicom(why: str, mutate: Callable[[bytes], bytes]) -> None:
    raw = request_bytes()
    assert store_messages.decode_store_request(raw) is not None
    assert store_messages.decode_store_request(mutate(raw)) is None, why


def _drop(raw: bytes, elem: int) -> bytes:
    out, offset = bytearray(), 0
    while offset < len(raw):
        _group, number, length = struct.unpack_from("<HHL", raw, offset)
        if number != elem:
            out += raw[offset:offset + 8 + length]
        offset += 8 + length
    return bytes(out)


@pytest.mark.parametrize(
    "values",
    [
        {"Status": 0x0000},
        {"Status": 0xB007, "ErrorComment": "coerced"},
        {"Status": 0xA700, "ErrorComment": "free space 12 MiB on /var is under the 500 MiB watermark"},
        {"Status": 0xC210, "ErrorComment": "odd"},
        {"Status": 0x0000, "AffectedSOPInstanceUID": None},
    ],
)
def test_store_response_is_written_as_pynetdicom_writes_it(values: dict[str, Any]) -> None:
    rsp = dimse_primitives.C_STORE()
    rsp.MessageID = 9
    rsp.MessageIDBeingRespondedTo = 9
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    for key, value in values.items():
        setattr(rsp, key, value)
    message = dimse_messages.C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert store_messages.store_response_command(rsp) == encode(message.command_set, True, True)


def test_response_with_offending_element_is_left_to_pynetdicom() -> None:
    rsp = dimse_primitives.C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.Status = 0xC000
    rsp.OffendingElement = [0x00100010]
    assert store_messages.store_response_command(rsp) is None


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The command sets read by decode_store_request (the SCU in this process offers it the
    responses too, which it leaves to pynetdicom: those are not counted)."""
    calls: list[int] = []
    original = store_messages.decode_store_request

    def counting(raw: bytes) -> store_messages.StoreRequest | None:
        request = original(raw)
        if request is not None:
            calls.append(request.message_id)
        return request

    monkeypatch.setattr(store_messages, "decode_store_request", counting)
    return calls


def test_listener_reads_store_requests_directly(node: Node, tmp_path: Path, counted: list[int]) -> None:
    files = write_ct_series(tmp_path / "s", 4, 16, 16) + write_ct_series(tmp_path / "big", 1, 512, 512, seed=7)
    assert send(node.port, files) == [0] * 5
    assert len(counted) == 5
    assert_stored_unchanged(node, files)




def test_fragmented_command_sets_take_pynetdicoms_path(node: Node, tmp_path: Path, counted: list[int]) -> None:
    """A peer allowed only tiny PDUs splits each command set over several; pynetdicom joins them."""
    node.ae.maximum_pdu_size = 64
    files = write_ct_series(tmp_path / "s", 3, 16, 16)
    assert send(node.port, files) == [0] * 3
    assert counted == []
    assert_stored_unchanged(node, files)


def test_pdu_logging_listener_takes_pynetdicoms_path(make_config: Callable[..., NodeConfig], tmp_path: Path,
                                                     counted: list[int]) -> None:
    """``serve --verbose`` binds pynetdicom's message loggers, which want pydicom command sets."""
    node = Node(make_config(), log_pdus=True)
    node.start()
    try:
        files = write_ct_series(tmp_path / "s", 3, 16, 16)
        assert send(node.port, files) == [0] * 3
        assert counted == []
        assert_stored_unchanged(node, files)
    finally:
        node.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_early_writeback_is_available_on_linux(tmp_path: Path) -> None:
    """The listener starts each file's writeback while it arrives; on Linux the call must be
    there (and work), or every fsync waits for the whole file."""
    assert store_messages._sync_file_range is not None
    path = tmp_path / "f"
    with open(path, "wb") as handle:
        handle.write(b"x" * 65536)
        handle.flush()
        assert store_messages._sync_file_range(handle.fileno(), 0, 0, store_messages._SYNC_FILE_RANGE_WRITE) == 0


def test_listener_of_an_fsyncing_store_starts_writeback(node: Node) -> None:
    assert node.store.syncs and node.ae.start_writeback
