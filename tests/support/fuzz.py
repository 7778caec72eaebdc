"""Seeded hostile inputs for the listener: malformed PDUs of every type, mangled association
requests, and C-STOREs whose command or data set is broken, each on its own connection.

Every case is bytes on a loopback socket, chosen by a seeded ``random.Random`` (a failing case
is reproduced from its seed and number). Kinds:

* ``noise``: random bytes; ``header``: a PDU header of any type with edge lengths (0, 1,
  shorter or longer than the body, 0xFFFFFFFF) over a random body;
* ``associate``: a valid A-ASSOCIATE-RQ then mangled (bytes flipped, truncated, item lengths
  changed), or with 128-200 presentation contexts, odd AE titles, odd UIDs;
* ``after-associate``: an association accepted, then a P-DATA-TF with PDV lengths past the end,
  zero-length PDVs, an unknown context, a bad message control header, or any other PDU type;
* ``store``: a C-STORE whose data set is noise, a valid CT data set with bytes flipped or cut,
  sequences nested thousands deep, UIDs with ``/``, ``..`` or only dots (the storage path is made
  of them), or pixel data announced longer than sent.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from .raw_peer import APPLICATION_CONTEXT, P_DATA_TF, _user_information, pdu, pdv, raw_command

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
KINDS = ("noise", "header", "associate", "after-associate", "store")


@dataclass(frozen=True)
class Case:
    number: int
    kind: str
    what: str
    #: bytes sent before the association (the whole case for kinds that never associate)
    opening: bytes
    #: bytes sent once the association is accepted (None: the case does not associate)
    then: bytes | None = None


def associate_rq(calling: str = "TEST_SCU", called: str = "AI_NODE", contexts: int = 2,
                 abstract: str = CT_IMAGE_STORAGE, max_pdu: int = 16382) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    definitions = []
    for number in range(contexts):
        context = PresentationContext()
        context.context_id = (2 * number + 1) % 256 or 255
        context.abstract_syntax = abstract if number % 2 == 0 else VERIFICATION
        context.transfer_syntax = [ImplicitVRLittleEndian]
        definitions.append(context)
    primitive.presentation_context_definition_list = definitions
    primitive.user_information = _user_information(max_pdu)
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return bytes(request.encode())


def _element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", group, element, len(value)) + value


def _uid(value: str) -> bytes:
    data = value.encode()
    return data + (b"\0" if len(data) % 2 else b"")


def ct_dataset(sop_instance: str, rows: int = 8, columns: int = 8, pixel_bytes: int | None = None) -> bytes:
    """A small CT data set in Implicit VR LE, written by hand (so any UID and length can be)."""
    pixels = bytes(2 * rows * columns) if pixel_bytes is None else bytes(pixel_bytes)
    parts = [
        _element(0x0008, 0x0016, _uid(CT_IMAGE_STORAGE)),
        _element(0x0008, 0x0018, _uid(sop_instance)),
        _element(0x0008, 0x0060, b"CT"),
        _element(0x0010, 0x0020, b"FUZZ"),
        _element(0x0020, 0x000D, _uid("1.2.3.4.5")),
        _element(0x0020, 0x000E, _uid("1.2.3.4.5.6")),
        _element(0x0028, 0x0002, struct.pack("<H", 1)),
        _element(0x0028, 0x0010, struct.pack("<H", rows)),
        _element(0x0028, 0x0011, struct.pack("<H", columns)),
        _element(0x0028, 0x0100, struct.pack("<H", 16)),
        _element(0x0028, 0x0101, struct.pack("<H", 16)),
        _element(0x0028, 0x0102, struct.pack("<H", 15)),
        _element(0x0028, 0x0103, struct.pack("<H", 1)),
    ]
    body = b"".join(parts)
    if pixel_bytes is not None and pixel_bytes != 2 * rows * columns:
        return body + struct.pack("<HHL", 0x7FE0, 0x0010, 2 * rows * columns) + pixels  # length says more than is sent
    return body + _element(0x7FE0, 0x0010, pixels)


def nested_sequences(depth: int) -> bytes:
    """``depth`` sequences of undefined length, each in the item of the one before (implicit VR)."""
    opening = (struct.pack("<HHL", 0x0008, 0x1115, 0xFFFFFFFF) + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)) * depth
    closing = (struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)) * depth
    return _element(0x0008, 0x0016, _uid(CT_IMAGE_STORAGE)) + _element(0x0008, 0x0018, _uid("1.2.3.9")) + opening + closing


def store_command(message_id: int, sop_instance: str) -> bytes:
    return raw_command([(0x0002, _uid(CT_IMAGE_STORAGE)), (0x0100, struct.pack("<H", 0x0001)),
                        (0x0110, struct.pack("<H", message_id)), (0x0700, struct.pack("<H", 2)),
                        (0x0800, struct.pack("<H", 0x0000)), (0x1000, _uid(sop_instance))])


def _flip(data: bytes, rng: random.Random, count: int) -> bytes:
    mutable = bytearray(data)
    for _ in range(count):
        mutable[rng.randrange(len(mutable))] = rng.randrange(256)
    return bytes(mutable)


def _store_case(rng: random.Random) -> tuple[str, bytes, bytes]:
    """(what, command set, data set)."""
    choice = rng.randrange(7)
    uid = f"1.2.826.0.1.3680043.9.7156.{rng.randrange(10**9)}"
    if choice == 0:
        return "data set of noise", store_command(1, uid), rng.randbytes(rng.randrange(1, 2000))
    if choice == 1:
        return "CT data set with bytes flipped", store_command(1, uid), _flip(ct_dataset(uid), rng, rng.randrange(1, 20))
    if choice == 2:
        data = ct_dataset(uid)
        return "CT data set cut short", store_command(1, uid), data[: rng.randrange(1, len(data))]
    if choice == 3:
        return "sequences nested 5000 deep", store_command(1, "1.2.3.9"), nested_sequences(5000)
    if choice == 4:
        odd = rng.choice(["../../../../tmp/fuzz-escape", "1.2/3.4", "..", "...", "/etc/passwd", "1.2.3\\..\\x", "."])
        return f"SOP Instance UID {odd!r}", store_command(1, odd), ct_dataset(odd)
    if choice == 5:
        return "pixel data announced longer than sent", store_command(1, uid), ct_dataset(uid, pixel_bytes=10)
    return "command set of noise", rng.randbytes(rng.randrange(4, 200)), ct_dataset(uid)


def _p_data(command: bytes, dataset: bytes, context_id: int = 1) -> bytes:
    return pdu(P_DATA_TF, pdv(context_id, 0x03, command)) + pdu(P_DATA_TF, pdv(context_id, 0x02, dataset))


def _after_associate(rng: random.Random) -> tuple[str, bytes]:
    choice = rng.randrange(6)
    if choice == 0:
        body = struct.pack(">L", rng.choice([0xFFFFFFFF, 1000, 7])) + bytes([1, 0x03]) + b"\0" * 4
        return "PDV length past the end of its PDU", pdu(P_DATA_TF, body)
    if choice == 1:
        return "zero-length PDV", pdu(P_DATA_TF, struct.pack(">L", 0))
    if choice == 2:
        return "PDV on a context never proposed", pdu(P_DATA_TF, pdv(99, 0x03, store_command(1, "1.2.3")))
    if choice == 3:
        return "bad message control header", pdu(P_DATA_TF, pdv(1, rng.choice([0x04, 0xFF, 0x10]), b"\0" * 8))
    if choice == 4:
        kind = rng.choice([0x01, 0x02, 0x03, 0x08, 0x09, 0x00, 0xFF])
        return f"PDU type 0x{kind:02X} inside an association", pdu(kind, rng.randbytes(rng.randrange(0, 64)))
    what, command, dataset = _store_case(rng)
    return what, _p_data(command, dataset)


def _associate_case(rng: random.Random) -> tuple[str, bytes]:
    choice = rng.randrange(6)
    if choice == 5:  # decodes as a PDU, but no primitive can hold it
        data = bytearray(associate_rq())
        item = data.index(b"\x20\x00", 74)
        data[item + 4] = rng.choice([0, 2, 254])
        return f"presentation context ID {data[item + 4]}", bytes(data)
    if choice == 0:
        return "A-ASSOCIATE-RQ with bytes flipped", _flip(associate_rq(), rng, rng.randrange(1, 10))
    if choice == 1:
        data = associate_rq()
        return "A-ASSOCIATE-RQ cut short", data[: rng.randrange(1, len(data))]
    if choice == 2:
        count = rng.randrange(128, 201)
        return f"A-ASSOCIATE-RQ with {count} presentation contexts", associate_rq(contexts=count)
    if choice == 3:
        title = rng.choice(["", " ", "ÄÖÜ_AE", "A" * 16, "\x00\x01", "ROOT\\X", "../AE"])
        try:
            return f"calling AE title {title!r}", associate_rq(calling=title)
        except (ValueError, TypeError):  # pynetdicom refuses to encode it: send the bytes by hand
            data = bytearray(associate_rq())
            data[26:42] = title.encode("latin-1", "replace")[:16].ljust(16, b" ")
            return f"calling AE title {title!r} (raw)", bytes(data)
    data = bytearray(associate_rq())
    item = rng.randrange(74, len(data) - 4)
    data[item:item + 2] = struct.pack(">H", rng.choice([0, 1, 0xFFFF, 0x8000]))
    return "an item length inside the request changed", bytes(data)


def cases(seed: int, count: int) -> Iterator[Case]:
    rng = random.Random(seed)
    for number in range(count):
        kind = KINDS[number % len(KINDS)]
        if kind == "noise":
            yield Case(number, kind, "random bytes", rng.randbytes(rng.randrange(1, 4096)))
        elif kind == "header":
            pdu_type = rng.choice([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x00, 0x08, 0xFF, rng.randrange(256)])
            body = rng.randbytes(rng.randrange(0, 512))
            length = rng.choice([0, 1, len(body), len(body) + 1, max(0, len(body) - 1), 0xFFFFFFFF, 0x7FFFFFFF])
            yield Case(number, kind, f"PDU type 0x{pdu_type:02X} announcing {length} bytes with {len(body)}",
                       struct.pack(">BBL", pdu_type, 0, length) + body)
        elif kind == "associate":
            what, data = _associate_case(rng)
            yield Case(number, kind, what, data)
        elif kind == "after-associate":
            what, data = _after_associate(rng)
            yield Case(number, kind, what, associate_rq(), data)
        else:
            what, command, dataset = _store_case(rng)
            yield Case(number, kind, what, associate_rq(), _p_data(command, dataset))


def _read_pdu(sock: socket.socket) -> int | None:
    """The type of the next PDU the node sends (reading it whole), None on close/timeout."""
    try:
        header = b""
        while len(header) < 6:
            chunk = sock.recv(6 - len(header))
            if not chunk:
                return None
            header += chunk
        remaining = struct.unpack(">L", header[2:6])[0]
        while remaining:
            chunk = sock.recv(min(remaining, 65536))
            if not chunk:
                return None
            remaining -= len(chunk)
        return header[0]
    except (TimeoutError, OSError):
        return None


def run_case(port: int, case: Case, timeout: float = 2.0) -> str:
    """Send one case on a fresh connection; what the node did ("associated, then 0x07", ...)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(case.opening)
        except OSError:
            return "closed while we sent"
        if case.then is None:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            answer = _read_pdu(sock)
            return f"answered 0x{answer:02X}" if answer is not None else "closed"
        answer = _read_pdu(sock)
        if answer != 0x02:
            return f"association answered 0x{answer:02X}" if answer is not None else "association closed"
        try:
            sock.sendall(case.then)
        except OSError:
            return "associated, closed while we sent"
        reply = _read_pdu(sock)
        return f"associated, then 0x{reply:02X}" if reply is not None else "associated, then closed"
