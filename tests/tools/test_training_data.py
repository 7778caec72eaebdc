from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes

from ai.phantom import make_phantom
from dicom_node.errors import VolumeError
from dicom_node.tools.synthetic import write_volume_series
from dicom_node.tools.training_data import read_case


def _write_seg(files: list[Path], labels: np.ndarray, names: dict[int, str], out: Path) -> None:
    sources = [dcmread(f) for f in files]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=name, segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Organ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, name in enumerate(names.values(), start=1)
    ]
    label_map = np.zeros(labels.shape, np.uint8)
    for n, value in enumerate(names, start=1):
        label_map[labels == value] = n
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=label_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1",
    )
    seg.save_as(out)


def test_series_with_seg_becomes_a_training_case(tmp_path: Path) -> None:
    phantom = make_phantom(21, shape=(10, 48, 48), spacing=(4.0, 4.0, 4.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path / "case1")
    order = np.random.default_rng(1).permutation(len(files))  # the SEG's frame order must not matter
    _write_seg([files[i] for i in order], phantom.labels[order], {1: "lungs", 2: "liver"}, tmp_path / "case1" / "seg.dcm")
    volume, labels = read_case(tmp_path / "case1", {"lungs": 1, "liver": 2, "spleen": 3})
    assert volume.shape == phantom.labels.shape
    expected = np.where(np.isin(phantom.labels, [1, 2]), phantom.labels, 0)
    assert np.array_equal(labels, expected)


def test_case_without_matching_segments_is_refused(tmp_path: Path) -> None:
    phantom = make_phantom(22, shape=(6, 32, 32), spacing=(4.0, 4.0, 4.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path / "c")
    _write_seg(files, phantom.labels, {2: "hepar"}, tmp_path / "c" / "seg.dcm")
    with pytest.raises(VolumeError, match="no segment label matches"):
        read_case(tmp_path / "c", {"liver": 2})
