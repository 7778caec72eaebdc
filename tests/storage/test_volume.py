from __future__ import annotations

import gzip
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from ai.phantom import make_phantom
from ai.types import Volume
from dicom_node.errors import VolumeError
from dicom_node.storage.volume import load_series
from dicom_node.tools.synthetic import write_volume_series

TEST_FILES = Path(dcmread.__globals__["__file__"]).parents[0] / "data" / "test_files"


def _file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path, f"{name} is not installed"
    return Path(path)


def _oblique(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


@pytest.fixture(scope="module")
def phantom_volume() -> Volume:
    p = make_phantom(5, shape=(12, 40, 48), spacing=(3.0, 2.0, 2.5))
    return Volume(np.rint(p.volume.voxels), p.volume.spacing, (10.0, 20.0, 30.0), _oblique(20))


def test_real_ct_stack_sorted_by_position_not_instance_number() -> None:
    files = sorted((TEST_FILES / "dicomdirtests" / "98892001" / "CT5N").iterdir())
    series = load_series(files)
    assert series.volume.shape == (5, 16, 16)
    assert series.volume.spacing == pytest.approx((2.5, 0.488281, 0.488281))
    # k runs along +z (the normal): first slice is the lowest one, InstanceNumber 10.
    first = dcmread(files[-1])
    assert dcmread(files[-1]).ImagePositionPatient[2] == pytest.approx(-1.2375)
    assert series.frames[0].sop_instance_uid == first.SOPInstanceUID
    # Voxel (k, j, i) maps to the patient position the source slice says.
    for k, ref in enumerate(series.frames):
        ds = next(dcmread(f) for f in files if dcmread(f, stop_before_pixels=True).SOPInstanceUID == ref.sop_instance_uid)
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
        assert series.volume.index_to_patient(np.array([k, 0, 0])) == pytest.approx(ipp, abs=1e-4)
        row, col = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)
        expected = ipp + 3 * float(ds.PixelSpacing[1]) * row + 2 * float(ds.PixelSpacing[0]) * col
        assert series.volume.index_to_patient(np.array([k, 2, 3])) == pytest.approx(expected, abs=1e-4)
        assert series.volume.voxels[k] == pytest.approx(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_gap_in_real_series_is_refused() -> None:
    files = sorted((TEST_FILES / "dicomdirtests" / "77654033" / "CT2").iterdir())
    with pytest.raises(VolumeError, match=r"missing slice\(s\): a gap of 202.50 mm"):
        load_series(files)


@pytest.mark.parametrize("order", ["shuffled", "reversed"])
def test_order_of_files_does_not_matter(phantom_volume: Volume, tmp_path: Path, order: str) -> None:
    files = write_volume_series(phantom_volume, tmp_path / "s")
    if order == "shuffled":
        random.Random(3).shuffle(files)
    else:
        files.reverse()
    series = load_series(files)
    assert np.array_equal(series.volume.voxels, phantom_volume.voxels)
    for kji in ([0, 0, 0], [11, 39, 47], [5, 7, 9]):
        assert series.volume.index_to_patient(np.array(kji)) == pytest.approx(phantom_volume.index_to_patient(np.array(kji)), abs=1e-3)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"])
def test_compressed_input_is_decoded(phantom_volume: Volume, tmp_path: Path, syntax: str) -> None:
    files = write_volume_series(phantom_volume, tmp_path / "s", transfer_syntax=syntax)
    assert str(dcmread(files[0]).file_meta.TransferSyntaxUID) == syntax
    assert np.array_equal(load_series(files).volume.voxels, phantom_volume.voxels)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm"])
def test_real_compressed_mr_equals_uncompressed(name: str) -> None:
    reference = load_series([_file("MR_small.dcm")]).volume
    volume = load_series([_file(name)]).volume
    assert volume.modality == "MR"
    assert np.array_equal(volume.voxels, reference.voxels)  # MR: stored values, no rescale


def test_enhanced_ct_multiframe() -> None:
    series = load_series([_file("eCT_Supplemental.dcm")])
    assert series.volume.shape == (2, 512, 512)
    assert [f.frame_number for f in series.frames] == [2, 1]  # sorted along the normal
    ds = dcmread(_file("eCT_Supplemental.dcm"))
    frame2 = ds.PerFrameFunctionalGroupsSequence[1]
    ipp = np.asarray(frame2.PlanePositionSequence[0].ImagePositionPatient, float)
    assert series.volume.index_to_patient(np.array([0, 0, 0])) == pytest.approx(ipp)


def test_enhanced_mr_with_real_per_frame_geometry(tmp_path: Path) -> None:
    source = Path(__import__("nibabel").__file__).parent / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"
    path = tmp_path / "mprage.dcm"
    with gzip.open(source) as fin, open(path, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    series = load_series([path])
    assert series.volume.shape == (176, 256, 256)
    assert series.volume.spacing == pytest.approx((1.0, 1.0, 1.0), abs=1e-4)
    ds = dcmread(path, stop_before_pixels=True)
    for k in (0, 100, 175):
        frame = series.frames[k].frame_number
        ipp = np.asarray(ds.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient, float)
        assert series.volume.index_to_patient(np.array([k, 0, 0])) == pytest.approx(ipp, abs=1e-3)


def test_enhanced_without_functional_groups_is_refused() -> None:
    with pytest.raises(VolumeError, match="without per-frame functional groups"):
        load_series([_file("emri_small.dcm")])


def test_duplicates_and_gaps(phantom_volume: Volume, tmp_path: Path) -> None:
    files = write_volume_series(phantom_volume, tmp_path / "s")
    # An identical copy of a slice (another SOP Instance UID, same pixels) is dropped.
    ds = dcmread(files[4])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.4242"
    ds.save_as(tmp_path / "dup.dcm", enforce_file_format=True)
    assert load_series([*files, tmp_path / "dup.dcm"]).volume.shape == phantom_volume.shape
    # A different slice at the same position is refused.
    arr = ds.pixel_array.copy()
    arr[0, 0] += 100
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "dup.dcm", enforce_file_format=True)
    with pytest.raises(VolumeError, match="two different slices at the same position"):
        load_series([*files, tmp_path / "dup.dcm"])
    # A missing slice is a gap.
    with pytest.raises(VolumeError, match="missing slice"):
        load_series(files[:5] + files[6:])


def test_mixed_sizes_and_orientations_refused(phantom_volume: Volume, tmp_path: Path) -> None:
    a = write_volume_series(phantom_volume, tmp_path / "a", seed=1)
    small = Volume(phantom_volume.voxels[:, :20, :20], phantom_volume.spacing, phantom_volume.origin, phantom_volume.direction)
    b = write_volume_series(small, tmp_path / "b", series_uid=str(dcmread(a[0]).SeriesInstanceUID), seed=2)
    with pytest.raises(VolumeError, match="mixed frame sizes"):
        load_series([*a[:3], b[5]])
    tilted = Volume(phantom_volume.voxels, phantom_volume.spacing, phantom_volume.origin, _oblique(35))
    c = write_volume_series(tilted, tmp_path / "c", series_uid=str(dcmread(a[0]).SeriesInstanceUID), seed=3)
    with pytest.raises(VolumeError, match="mixed orientations"):
        load_series([*a[:3], c[5]])
    with pytest.raises(VolumeError, match="2 series"):
        load_series([a[0], write_volume_series(phantom_volume, tmp_path / "d", seed=9)[0]])


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"])  # RLE Lossless, JPEG 2000 Lossless
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path, syntax: str) -> None:
    """A frame that claims 65535 x 65535 (8 GiB decoded) in a few bytes: refused from the header,
    with no memory to speak of (the limit is MAX_FRAME_PIXELS), by a real compressed instance
    whose Rows and Columns were raised."""
    import resource

    from pydicom.encaps import encapsulate

    from dicom_node.storage.volume import MAX_FRAME_PIXELS

    [source] = write_volume_series(make_phantom(5, shape=(1, 32, 32), spacing=(1.0, 1.0, 1.0), liver_lesions=(0, 0),
                                                lung_nodules=(0, 0)).volume, tmp_path / "src", seed=5)
    ds = dcmread(source)
    ds.compress(syntax)  # a real compressed frame, then a header that lies about its size
    ds.Rows = ds.Columns = 65535
    frame = bytes(ds.PixelData)[:400]
    ds.PixelData = encapsulate([frame])
    bomb = tmp_path / "bomb.dcm"
    ds.save_as(bomb)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(VolumeError, match=rf"declares 65535 x 65535 pixels per frame; this node decodes frames of 1 to {MAX_FRAME_PIXELS}"):
        load_series([bomb])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: under 200 MB more
    ds.Rows = ds.Columns = 4096  # allowed per frame, but 40000 of them is too many for one series
    ds.NumberOfFrames = 40000
    ds.save_as(bomb)
    with pytest.raises(VolumeError, match="more than the 600000000 voxels a series may have here"):
        load_series([bomb])
