"""What the node needs to know about one received instance, read from its file header.

The listener never decodes pixel data: it reads the header (everything before Pixel Data)
for the index and checks that the Pixel Data the file claims is really all there. The second
check guards the streamed receive path (pynetdicom issue 765 once stored truncated Pixel Data
when datasets were written to disk in chunks), so a short file is refused, never acknowledged.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.filereader import read_dataset
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from .errors import InvalidInstanceError

_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF

_UID_CLEAN = re.compile(r"[^0-9.]")


def clean_uid(uid: str) -> str:
    """A UID made safe as a file name: only digits and dots survive, never empty or '.'/'..'."""
    cleaned = _UID_CLEAN.sub("", uid).strip(".")
    if not cleaned:
        raise InvalidInstanceError(f"UID {uid!r} has no digits to name a file with")
    return cleaned


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The attributes the index and routing need, as text."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_description: str = ""
    accession_number: str = ""
    modality: str = ""
    body_part_examined: str = ""
    series_description: str = ""
    series_number: int | None = None
    instance_number: int | None = None


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def read_header(path: Path) -> InstanceHeader:
    """Parse the header of a DICOM Part 10 file and check its Pixel Data is complete.

    Raises InvalidInstanceError with the reason when the file is not a dataset we can index
    (no file meta, a required UID missing) or when it is shorter than its own elements say.
    """
    return _read_header(path, fast=True)


def _read_header(path: Path, fast: bool) -> InstanceHeader:
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as fp:
            ts = _plain_file_meta_transfer_syntax(fp) if fast else None
            if ts is None:
                fp.seek(0)
                ds = dcmread(fp, stop_before_pixels=True)
                ts = UID(ds.file_meta.TransferSyntaxUID)
            else:
                ds = read_dataset(fp, ts.is_implicit_VR, ts.is_little_endian, stop_when=_at_pixel_data)
            pixel_start = fp.tell()
            if ts != DeflatedExplicitVRLittleEndian:
                if pixel_start < size:
                    _check_pixel_data(fp, pixel_start, size, ts.is_implicit_VR, ts.is_little_endian)
                elif "Rows" in ds:
                    # pydicom stops quietly at the end of a short file: an image pixel module
                    # with no Pixel Data after it is a file cut short, not a valid instance.
                    raise InvalidInstanceError("Rows present but Pixel Data missing (truncated file?)")
    except InvalidInstanceError:
        raise
    except (InvalidDicomError, EOFError, struct.error, zlib.error, ValueError, KeyError, AttributeError) as exc:
        raise InvalidInstanceError(f"not a readable DICOM dataset: {exc}") from exc

    text = _TextReader(ds)
    header = InstanceHeader(
        sop_class_uid=text.ascii(0x00080016),
        sop_instance_uid=text.ascii(0x00080018),
        study_instance_uid=text.ascii(0x0020000D),
        series_instance_uid=text.ascii(0x0020000E),
        transfer_syntax_uid=str(ts),
        patient_id=text.coded("PatientID", 0x00100020),
        patient_name=text.coded("PatientName", 0x00100010),
        study_date=text.ascii(0x00080020),
        study_description=text.coded("StudyDescription", 0x00081030),
        accession_number=text.coded("AccessionNumber", 0x00080050),
        modality=text.ascii(0x00080060),
        body_part_examined=text.ascii(0x00180015),
        series_description=text.coded("SeriesDescription", 0x0008103E),
        series_number=_int_or_none(text.ascii(0x00200011)),
        instance_number=_int_or_none(text.ascii(0x00200013)),
    )
    missing = [name for name, value in (("SOPClassUID", header.sop_class_uid), ("SOPInstanceUID", header.sop_instance_uid),
               ("StudyInstanceUID", header.study_instance_uid), ("SeriesInstanceUID", header.series_instance_uid)) if not value]
    if missing:
        raise InvalidInstanceError(f"required attribute(s) missing or empty: {', '.join(missing)}")
    return header


def _at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
    return (tag >> 16, tag & 0xFFFF) in _PIXEL_TAGS


def _plain_file_meta_transfer_syntax(fp: BinaryIO) -> UID | None:
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


class _TextReader:
    """Reads element values straight from the raw bytes pydicom left unconverted.

    Converting through pydicom (value validation, multi-value splitting) costs more than the
    rest of the store path for a small instance; UIDs and code strings are plain ASCII, and
    free text is only decoded by pydicom when a Specific Character Set says it must be.
    """

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        charset = ds.get_item(0x00080005)
        raw = charset.value if charset is not None else None
        self.plain = raw is None or (isinstance(raw, bytes) and raw.strip(b" \x00") in (b"", b"ISO_IR 6", b"ISO_IR 100"))

    def ascii(self, tag: int) -> str:
        element = self.ds.get_item(tag)
        if element is None or element.value is None:
            return ""
        value = element.value
        if isinstance(value, bytes):
            return value.decode("latin-1").strip(" \x00")
        return str(value).strip()

    def coded(self, keyword: str, tag: int) -> str:
        if self.plain:
            return self.ascii(tag)
        return _text(self.ds.get(keyword))


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


def _check_pixel_data(fp: BinaryIO, start: int, size: int, implicit: bool, little: bool) -> None:
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
