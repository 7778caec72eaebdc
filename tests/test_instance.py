from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_charset_files, get_testdata_file

from dicom_node.errors import InvalidInstanceError
from dicom_node.instance import _read_header, clean_uid, read_header
from dicom_node.synthetic import write_ct_series


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


def test_clean_uid() -> None:
    assert clean_uid("1.2.3") == "1.2.3"
    assert clean_uid("../1.2/3\x00") == "1.23"
    with pytest.raises(InvalidInstanceError):
        clean_uid("../..")
