from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicom_node.errors import InvalidInstanceError
from dicom_node.storage.header import _read_header, checked_uid, read_header
from dicom_node.storage.header_scan import plain_file_meta_transfer_syntax, scan_dataset
from dicom_node.tools.synthetic import write_ct_series

from ..conftest import with_uids


def _testfile(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path, f"pydicom test file {name} is not installed"
    return Path(path)


def test_header_of_a_ct() -> None:
    header = read_header(_testfile("CT_small.dcm"))
    assert header.modality == "CT"
    assert header.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert header.study_instance_uid and header.series_instance_uid and header.sop_instance_uid
    assert header.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert header.patient_id == "1CT1"


@pytest.mark.parametrize("name", ["MR2_J2KR.dcm", "JPEG-LL.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "eCT_Supplemental.dcm"])
def test_compressed_and_enhanced_headers_read_without_decoding(name: str) -> None:
    header = read_header(_testfile(name))
    assert header.sop_instance_uid


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR2_J2KR.dcm",
                                  "emri_small_RLE.dcm", "image_dfl.dcm", "rtplan.dcm", "SC_rgb_small_odd.dcm",
                                  "chrRuss.dcm", "chrJapMulti.dcm", "ExplVR_BigEndNoMeta.dcm"])
def test_fast_file_meta_path_reads_what_pydicom_reads(name: str) -> None:
    """read_header parses plain File Meta itself; on every kind of file the header it gives
    is the one pydicom's own File Meta reader gives (or the same refusal)."""
    path = Path(get_charset_files(name)[0]) if name.startswith("chr") else _testfile(name)
    try:
        expected = _read_header(path, fast=False)
    except InvalidInstanceError as exc:
        with pytest.raises(InvalidInstanceError) as caught:
            read_header(path)
        assert type(caught.value) is type(exc)
        return
    assert read_header(path) == expected


def _installed_test_files() -> list[Path]:
    """Every DICOM file pydicom and pydicom-data ship (read offline, nothing downloaded)."""
    site = Path(pydicom.__file__).parents[1]
    roots = [Path(pydicom.__file__).parent / "data" / "test_files", site / "data_store" / "data"]
    skip = {".py", ".pyc", ".txt", ".json", ".gz", ".bz2", ".zip", ".npy", ".xml"}
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file() and p.suffix not in skip and p.stat().st_size < 20e6)


def _outcome(path: Path, fast: bool) -> object:
    try:
        return _read_header(path, fast)
    except Exception as exc:  # compared by kind: both readers must refuse the same files
        return type(exc)


def test_header_scan_reads_what_pydicom_reads_on_every_shipped_file() -> None:
    """The direct header walk (sequences, icons, UN, private data, implicit and explicit VR)
    gives exactly pydicom's header, or the same refusal, on all of pydicom's test files; and it
    does the work itself on most of them rather than handing them to pydicom."""
    files = _installed_test_files()
    assert len(files) > 200, "pydicom-data (a test extra) is not installed"
    scanned = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            assert _outcome(path, fast=True) == _outcome(path, fast=False), path.name
            with open(path, "rb") as fp:
                ts = plain_file_meta_transfer_syntax(fp)
                scanned += ts is not None and scan_dataset(fp, os.path.getsize(path), ts) is not None
    assert scanned > 150


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_header_scan_walks_nested_undefined_length_sequences(tmp_path: Path, ts: str) -> None:
    """Undefined-length sequences inside undefined-length items, an icon with encapsulated
    pixel data inside a sequence, and the wanted attributes after all of it."""
    icon = Dataset()
    icon.Rows = icon.Columns = 2
    icon.BitsAllocated = 8
    icon.add_new(0x7FE00010, "OB", b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\x00\xe0\x04\x00\x00\x00abcd")
    icon["PixelData"].is_undefined_length = ts == ExplicitVRLittleEndian  # encapsulated fragments
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-D0050", "SRT"
    middle = Dataset()
    middle.ConceptNameCodeSequence = Sequence([inner, inner])
    for item in (inner, middle):
        item.is_undefined_length_sequence_item = True
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    ds.ContentSequence = Sequence([middle, Dataset()])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.IconImageSequence = Sequence([icon])
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.PatientID = "CT", 3, 7, "P-1"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = 16
    ds.add_new(0x7FE00010, "OW", b"\x00" * 8)
    for parent, keyword in ((middle, "ConceptNameCodeSequence"), (ds, "ContentSequence"), (ds, "IconImageSequence")):
        parent[keyword].is_undefined_length = True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    path = tmp_path / "nested.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True)
    raw = path.read_bytes()
    # Undefined-length sequences and items: the walk must follow them to their delimiters.
    assert b"\xfe\xff\xdd\xe0" in raw and b"\xfe\xff\x0d\xe0" in raw
    with open(path, "rb") as fp:
        scan = scan_dataset(fp, len(raw), plain_file_meta_transfer_syntax(fp))
    assert scan is not None
    assert raw[scan.pixel_start:scan.pixel_start + 4] == b"\xe0\x7f\x10\x00"
    assert read_header(path) == _read_header(path, fast=False)
    assert (read_header(path).instance_number, read_header(path).patient_id) == (7, "P-1")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[: raw.index(b"T-D0050") + 3])  # ends inside the nested sequence
    assert _outcome(cut, fast=True) == _outcome(cut, fast=False) is InvalidInstanceError


def test_truncated_native_pixel_data_is_refused(tmp_path: Path) -> None:
    [path] = write_ct_series(tmp_path / "s", 1, 64, 64)
    short = tmp_path / "short.dcm"
    short.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InvalidInstanceError, match="Pixel Data is truncated"):
        read_header(short)


def test_truncated_encapsulated_pixel_data_is_refused(tmp_path: Path) -> None:
    data = _testfile("MR2_J2KR.dcm").read_bytes()
    short = tmp_path / "short.dcm"
    short.write_bytes(data[: len(data) - 5000])
    with pytest.raises(InvalidInstanceError, match="encapsulated Pixel Data is truncated"):
        read_header(short)
    no_delimiter = tmp_path / "nodelim.dcm"
    no_delimiter.write_bytes(data[:-8])  # the sequence delimiter item is missing
    with pytest.raises(InvalidInstanceError, match="truncated"):
        read_header(no_delimiter)


def test_header_cut_before_pixel_data_is_refused(tmp_path: Path) -> None:
    [path] = write_ct_series(tmp_path / "s", 1, 64, 64)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 64 * 64 * 2 - 12])
    with pytest.raises(InvalidInstanceError):
        read_header(cut)


def test_not_dicom_and_missing_uids(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(InvalidInstanceError, match="not a readable DICOM dataset"):
        read_header(junk)


@pytest.mark.parametrize("bad", ["1.2.3a", "1.2/3", "../1.2", "1..2", ".1.2", "1.2.", "1.2 .3", "1.2\x003", "",
                                 "1." + "2" * 63, "1.2.-3", "１.2"])
def test_checked_uid_refuses_what_is_not_a_uid(bad: str) -> None:
    with pytest.raises(InvalidInstanceError, match="SOPInstanceUID"):
        checked_uid(bad, "SOPInstanceUID")


def test_checked_uid_strips_padding_and_accepts_leading_zeros_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert checked_uid("1.2.840.10008.1.2\x00") == "1.2.840.10008.1.2"
    assert checked_uid("1.2.3 ") == "1.2.3"
    assert checked_uid("1." + "2" * 62) == "1." + "2" * 62  # 64 characters: the most a UID may have
    assert not caplog.records
    with caplog.at_level("WARNING", logger="dicom_node.storage.header"):
        assert checked_uid("1.2.03.0.4") == "1.2.03.0.4"
    assert "leading zero" in caplog.text


def test_read_header_refuses_an_instance_whose_uids_are_not_uids(tmp_path: Path) -> None:
    [good] = write_ct_series(tmp_path / "s", 1, 16, 16)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        bad = with_uids(good, tmp_path / f"bad-{keyword}.dcm", **{keyword: "1.2.3x"})
        for fast in (True, False):
            with pytest.raises(InvalidInstanceError, match=keyword):
                _read_header(bad, fast=fast)
