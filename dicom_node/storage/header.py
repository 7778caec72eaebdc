"""What the node needs to know about one received instance, read from its file header.

The listener never decodes pixel data: it reads the header (everything before Pixel Data)
for the index and checks that the Pixel Data the file claims is really all there. The second
check guards the streamed receive path (pynetdicom issue 765 once stored truncated Pixel Data
when datasets were written to disk in chunks), so a short file is refused, never acknowledged.

The usual file (plain File Meta, a Little Endian dataset in a Latin-1 or ASCII character set)
is read by a direct walk over its element headers (``scan_dataset``); anything else, or
anything the walk cannot settle, is read by pydicom. Tests compare both readers on every file
pydicom and pydicom-data ship.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from ..errors import InvalidInstanceError
from .header_scan import ScannedText, check_pixel_data, plain_file_meta_transfer_syntax, scan_dataset

log = logging.getLogger(__name__)


#: PS3.5 9.1: components of digits separated by single dots, at most 64 characters in all.
_UID_SYNTAX = re.compile(r"[0-9]+(?:\.[0-9]+)*")


_LEADING_ZERO = re.compile(r"(?:^|\.)0[0-9]")


UID_MAX_LENGTH = 64


def checked_uid(uid: str, name: str = "UID") -> str:
    """``uid`` without the standard's trailing padding, refused unless it is a UID by PS3.5 9.1.

    Files and folders are named by UIDs so checked, never "cleaned": cleaning maps different UIDs
    to one name, and a second instance (another patient's) would then overwrite an acknowledged
    one. The UID itself names the instance's file and folders, so what is refused here is what could
    make two different UIDs share a path (anything but digits and dots, an empty component, a
    dot at either end) or a path leave the storage folder. A component with a leading zero
    breaks the standard's rule but is a lapse real modalities make and harms no path: accepted,
    with a warning.
    """
    value = uid.rstrip("\x00 ")
    if not value:
        raise InvalidInstanceError(f"{name} is empty")
    if len(value) > UID_MAX_LENGTH:
        raise InvalidInstanceError(f"{name} is {len(value)} characters long, over the {UID_MAX_LENGTH} a UID may have")
    if _UID_SYNTAX.fullmatch(value) is None:
        raise InvalidInstanceError(f"{name} is not a UID (digits and dots only): {value[:24]!r}")
    if _LEADING_ZERO.search(value):
        log.warning("%s %s has a component with a leading zero (PS3.5 9.1 forbids it); accepted as it is", name, value)
    return value


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


def text_of(value: object) -> str:
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
    with open(path, "rb") as fp:
        try:
            ts = plain_file_meta_transfer_syntax(fp) if fast else None
            scan = scan_dataset(fp, size, ts) if ts is not None else None
            if scan is not None:
                text: _TextReader | ScannedText = scan
                pixel_start, has_rows = scan.pixel_start, 0x00280010 in scan.values
            else:
                fp.seek(0)
                ds = dcmread(fp, stop_before_pixels=True)
                ts = UID(ds.file_meta.TransferSyntaxUID)
                pixel_start, has_rows, text = fp.tell(), "Rows" in ds, _TextReader(ds)
            if ts != DeflatedExplicitVRLittleEndian:
                if pixel_start < size:
                    check_pixel_data(fp, pixel_start, size, ts.is_implicit_VR, ts.is_little_endian)
                elif has_rows:
                    # pydicom stops quietly at the end of a short file: an image pixel module
                    # with no Pixel Data after it is a file cut short, not a valid instance.
                    raise InvalidInstanceError("Rows present but Pixel Data missing (truncated file?)")
        except InvalidInstanceError:
            raise
        except RecursionError:  # pydicom parses nested sequences recursively
            raise InvalidInstanceError("sequences nested too deeply to read") from None
        # pydicom raises OSError for a file that ends inside a sequence; the file itself is open
        # and was just written, so here it means a short dataset, not a failing disk.
        except (InvalidDicomError, EOFError, OSError, struct.error, zlib.error, ValueError, KeyError, AttributeError) as exc:
            raise InvalidInstanceError(f"not a readable DICOM dataset: {exc}") from exc

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
    for name, value in (("StudyInstanceUID", header.study_instance_uid), ("SeriesInstanceUID", header.series_instance_uid),
                        ("SOPInstanceUID", header.sop_instance_uid)):
        checked_uid(value, name)
    return header


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
        return text_of(self.ds.get(keyword))


def file_version(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(modification time in ns, size) of ``path``: what tells one version of a file from the
    next; (-1, -1) when it cannot be read."""
    try:
        stat = os.stat(path)
        return stat.st_mtime_ns, stat.st_size
    except OSError:
        return -1, -1


def header_at(path: str | os.PathLike[str]) -> Dataset | None:
    """A stored instance's whole header (pydicom, no pixel data), read once per file version:
    routing's rules, its de-identified forwards and returned results look at the same files on
    every sweep. None, logged once per version, when it cannot be read."""
    return _header_at_version(str(path), *file_version(path))


@lru_cache(maxsize=4096)
def _header_at_version(path: str, mtime_ns: int, size: int) -> Dataset | None:
    try:
        return dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        log.warning("Cannot read the header of %s (%s): routing sees the index's attributes only", path, exc)
        return None
