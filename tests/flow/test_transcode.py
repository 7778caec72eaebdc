"""Decoding a stored instance for a peer that takes only uncompressed syntaxes: the same
instance (SOP Instance UID kept), pixel for pixel, encoded as the peer accepted; the stored
file itself whenever its own syntax was accepted; a clear error when it cannot be decoded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from dicom_node.errors import TranscodeError
from dicom_node.flow.transcode import for_sending, stored_syntax

REFERENCE = get_testdata_file("MR_small.dcm")  # the uncompressed original of the two below


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_compressed_instance_is_decoded_into_the_accepted_syntax(name: str, target: str) -> None:
    path = get_testdata_file(name)
    stored = dcmread(path)
    out = for_sending(path, target)
    assert not isinstance(out, str)
    assert out.file_meta.TransferSyntaxUID == target
    assert out.original_encoding[0] == (target == ImplicitVRLittleEndian)
    assert out.SOPInstanceUID == stored.SOPInstanceUID
    assert np.array_equal(out.pixel_array, dcmread(REFERENCE).pixel_array)


def test_the_stored_file_goes_as_it_is_when_its_syntax_was_accepted() -> None:
    path = get_testdata_file("MR_small_RLE.dcm")
    assert for_sending(path, str(stored_syntax(path))) == str(path)
    assert for_sending(REFERENCE, ExplicitVRLittleEndian) == str(REFERENCE)


def test_undecodable_or_unsupported_targets_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.dcm"
    shutil.copy(get_testdata_file("MR_small_RLE.dcm"), broken)
    ds = dcmread(broken)
    ds.PixelData = ds.PixelData[:200]  # a truncated RLE frame
    ds.save_as(broken)
    with pytest.raises(TranscodeError, match="cannot decode its RLE Lossless pixel data"):
        for_sending(broken, ExplicitVRLittleEndian)
    with pytest.raises(TranscodeError, match="only decompression is done"):
        for_sending(REFERENCE, JPEG2000Lossless)
