"""The direct walk over a Part 10 file's element headers that reads the attributes the index needs
without building a pydicom Dataset (storage/header.py falls back to pydicom for anything it does
not handle: deflate, another character set, an unusual encoding), and the check that Pixel Data is
as long as it says."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from ..errors import InvalidInstanceError

_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}


_ITEM = (0xFFFE, 0xE000)


_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


_UNDEFINED = 0xFFFFFFFF


def plain_file_meta_transfer_syntax(fp: BinaryIO) -> UID | None:
    """The Transfer Syntax of a Part 10 file whose File Meta Information is plain Explicit VR
    Little Endian (as pynetdicom, and so this node, writes it), with ``fp`` left at the start
    of the dataset; None for anything else (deflated, private or odd files), which pydicom's
    full reader then takes. pydicom's File Meta reader validates and converts every element,
    a quarter of the cost of reading a small instance's header."""
    head = fp.read(132)
    if len(head) != 132 or head[128:] != b"DICM":
        return None
    transfer_syntax = b""
    while True:
        start = fp.tell()
        peek = fp.read(6)
        fp.seek(start)
        if len(peek) < 6 or peek[:2] != b"\x02\x00":
            break
        if not peek[4:6].isalpha() or not peek[4:6].isupper():
            return None  # not Explicit VR
        try:
            tag, length = _read_element_header(fp, implicit=False, little=True)
        except InvalidInstanceError:
            return None
        value = fp.read(length)
        if len(value) < length:
            return None
        if tag == (0x0002, 0x0010):
            transfer_syntax = value
    try:
        ts = UID(transfer_syntax.decode("ascii").strip(" \x00"))
    except UnicodeDecodeError:
        return None
    if not ts.is_transfer_syntax or ts.is_private or ts == DeflatedExplicitVRLittleEndian:
        return None
    return ts


#: The top-level elements a header needs, as (group << 16 | element): the index's attributes,
#: Specific Character Set (which decides whether text can be read as plain ASCII) and Rows.
_WANTED = frozenset({0x00080005, 0x00080016, 0x00080018, 0x00080020, 0x00080050, 0x00080060, 0x00081030,
                     0x0008103E, 0x00100010, 0x00100020, 0x00180015, 0x0020000D, 0x0020000E, 0x00200011,
                     0x00200013, 0x00280010})


_PIXEL_TAG_INTS = frozenset((group << 16) | element for group, element in _PIXEL_TAGS)


_ITEM_TAG, _ITEM_END_TAG, _SEQUENCE_END_TAG = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD",
                  b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
                  b"UL", b"UN", b"UR", b"US", b"UT", b"UV"})


_PLAIN_CHARSETS = (b"", b"ISO_IR 6", b"ISO_IR 100")


_SCAN_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class ScannedText:
    """The raw values ``scan_dataset`` kept, read as ``_TextReader`` reads pydicom's."""

    values: dict[int, bytes]
    pixel_start: int

    def ascii(self, tag: int) -> str:
        raw = self.values.get(tag)
        return "" if raw is None else raw.decode("latin-1").strip(" \x00")

    def coded(self, keyword: str, tag: int) -> str:
        return self.ascii(tag)  # only plain character sets are scanned


class _Window:
    """A file read forward in chunks and addressed by absolute offset."""

    def __init__(self, fp: BinaryIO, size: int) -> None:
        self.fp, self.size = fp, size
        self.base = fp.tell()
        self.data = fp.read(_SCAN_CHUNK)

    def get(self, pos: int, count: int) -> bytes | None:
        """``count`` bytes at ``pos``, or None where the file is shorter."""
        if pos + count > self.size:
            return None
        rel = pos - self.base
        if rel < 0 or rel + count > len(self.data):
            self.fp.seek(pos)
            self.base, self.data, rel = pos, self.fp.read(max(count, _SCAN_CHUNK)), 0
            if len(self.data) < count:
                return None
        return self.data[rel:rel + count]

    def element(self, pos: int, implicit: bool) -> tuple[int, int, int, bytes] | None:
        """(tag, value length, value offset, VR or b"") of the element header at ``pos``."""
        head = self.get(pos, 8)
        if head is None:
            return None
        group, number = struct.unpack_from("<HH", head)
        tag = (group << 16) | number
        if implicit or group == 0xFFFE:
            return tag, struct.unpack_from("<L", head, 4)[0], pos + 8, b""
        vr = head[4:6]
        if vr not in _VRS:
            return None
        if vr in _LONG_VRS:
            more = self.get(pos + 8, 4)
            return None if more is None else (tag, struct.unpack("<L", more)[0], pos + 12, vr)
        return tag, struct.unpack_from("<H", head, 6)[0], pos + 8, vr


def scan_dataset(fp: BinaryIO, size: int, ts: UID) -> ScannedText | None:
    """The header values of a Little Endian dataset starting at ``fp``'s position, read without
    building a pydicom Dataset (pydicom's reader takes ~100 us for a small CT header, most of
    the listener's per-file parse cost); None for anything this walk does not settle (another
    character set, a VR it does not know, a length past the end, an encoding that differs from
    the transfer syntax): the caller then reads the file with pydicom, as before."""
    if not ts.is_little_endian:
        return None
    implicit = bool(ts.is_implicit_VR)
    window = _Window(fp, size)
    pos = window.base
    first = window.get(pos, 6)
    if first is not None and (first[4:6] in _VRS) == implicit:
        return None  # the dataset is not encoded as its transfer syntax says: pydicom copes with that
    values: dict[int, bytes] = {}
    pixel_start = size
    try:
        while pos < size:
            element = window.element(pos, implicit)
            if element is None:
                return None
            tag, length, value_pos, _vr = element
            if tag in _PIXEL_TAG_INTS:
                pixel_start = pos
                break
            if tag in _WANTED and length != _UNDEFINED:
                raw = window.get(value_pos, length)
                if raw is None:
                    return None
                values[tag] = raw
            end = _element_end(window, element, implicit)
            if end is None:
                return None
            pos = end
    except RecursionError:
        return None
    charset = values.get(0x00080005)
    if charset is not None and charset.strip(b" \x00") not in _PLAIN_CHARSETS:
        return None
    return ScannedText(values, pixel_start)


def _element_end(window: _Window, element: tuple[int, int, int, bytes], implicit: bool) -> int | None:
    """The offset after an element whose header ``_Window.element`` read, its value skipped
    (walked, for an undefined length); None past the end of the file."""
    _tag, length, value_pos, vr = element
    if length == _UNDEFINED:
        return _skip_undefined_length(window, value_pos, implicit or vr == b"UN")
    end = value_pos + length
    return end if end <= window.size else None


def _skip_undefined_length(window: _Window, pos: int, implicit: bool) -> int | None:
    """The offset after an undefined-length value (a sequence, or encapsulated fragments) whose
    items start at ``pos``: items are walked up to the Sequence Delimitation Item."""
    while True:
        item = window.element(pos, True)
        if item is None:
            return None
        tag, length, value_pos, _vr = item
        if tag == _SEQUENCE_END_TAG:
            return value_pos
        if tag != _ITEM_TAG:
            return None
        if length != _UNDEFINED:
            pos = value_pos + length
            if pos > window.size:
                return None
            continue
        pos = value_pos  # an undefined-length item: its elements up to the Item Delimitation Item
        while True:
            element = window.element(pos, implicit)
            if element is None:
                return None
            if element[0] == _ITEM_END_TAG:
                pos = element[2]
                break
            end = _element_end(window, element, implicit)
            if end is None:
                return None
            pos = end


def _read_element_header(fp: BinaryIO, implicit: bool, little: bool) -> tuple[tuple[int, int], int]:
    endian = "<" if little else ">"
    raw = fp.read(8)
    if len(raw) < 8:
        raise InvalidInstanceError("file ends inside an element header (truncated)")
    group, element = struct.unpack(endian + "HH", raw[:4])
    if implicit or (group, element) in (_ITEM, _SEQUENCE_DELIMITER):
        (length,) = struct.unpack(endian + "L", raw[4:])
        return (group, element), length
    vr = raw[4:6]
    if vr in _LONG_VRS:
        more = fp.read(4)
        if len(more) < 4:
            raise InvalidInstanceError("file ends inside an element header (truncated)")
        (length,) = struct.unpack(endian + "L", more)
    else:
        (length,) = struct.unpack(endian + "H", raw[6:])
    return (group, element), length


def check_pixel_data(fp: BinaryIO, start: int, size: int, implicit: bool, little: bool) -> None:
    """Walk the pixel data element (native or encapsulated) and fail if the file is short."""
    fp.seek(start)
    tag, length = _read_element_header(fp, implicit, little)
    if tag not in _PIXEL_TAGS:
        return
    if length != _UNDEFINED:
        if fp.tell() + length > size:
            raise InvalidInstanceError(f"Pixel Data is truncated: {length} bytes declared, {size - fp.tell()} present")
        return
    while True:
        item, item_length = _read_element_header(fp, True, little)
        if item == _SEQUENCE_DELIMITER:
            return
        if item != _ITEM or item_length == _UNDEFINED:
            raise InvalidInstanceError(f"encapsulated Pixel Data is malformed: unexpected tag ({item[0]:04X},{item[1]:04X})")
        if fp.tell() + item_length > size:
            raise InvalidInstanceError("encapsulated Pixel Data is truncated: a fragment runs past the end of the file")
        fp.seek(item_length, os.SEEK_CUR)
