"""The uncertainty Parametric Map: valid (dciodvfy), each frame's float values equal the
uncertainty of the source image it references, deterministic UIDs, nothing for a pipeline
without probabilities."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from ai.phantom import Phantom, make_phantom
from ai.registry import ModelRegistry
from ai.types import UNCERTAINTY_STEPS, Findings
from dicom_node.results import ResultSettings
from dicom_node.results.parametric_map import UNCERTAINTY, build_uncertainty_map
from dicom_node.storage.volume import SeriesVolume, load_series
from dicom_node.tools.synthetic import write_volume_series

from ..support import processes
from ..support.peers import system_binary


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(6, shape=(20, 64, 80), spacing=(3.0, 2.5, 2.5), liver_lesions=(0, 0), lung_nodules=(0, 0))


@pytest.fixture(scope="module")
def source(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> SeriesVolume:
    return load_series(write_volume_series(phantom.volume, tmp_path_factory.mktemp("src"), seed=6))


@pytest.fixture(scope="module")
def findings(phantom: Phantom) -> Findings:
    """Ground-truth labels with an uncertainty that differs on every slice and row, so a frame
    paired with the wrong source image shows."""
    rng = np.random.default_rng(6)
    uncertainty = rng.integers(0, UNCERTAINTY_STEPS + 1, size=phantom.labels.shape, dtype=np.uint8)
    return Findings(phantom.labels, ModelRegistry().get("ct-organs").label_infos(), (), {}, {}, "ct-organs", "2.0.0",
                    uncertainty=uncertainty)


def test_each_frame_holds_the_uncertainty_of_the_image_it_references(source: SeriesVolume, findings: Findings,
                                                                    tmp_path: Path) -> None:
    pm = build_uncertainty_map(source, findings, "job-a", ResultSettings(map_series_number=9103))
    assert pm is not None
    path = tmp_path / "pm.dcm"
    pm.save_as(path, enforce_file_format=True)
    back = dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and back.SeriesNumber == 9103
    assert "FloatPixelData" in back and back.BitsAllocated == 32  # what OHIF reads as values
    assert back.NumberOfFrames == source.volume.shape[0]
    assert (back.Rows, back.Columns) == source.volume.shape[1:]
    mapping = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == UNCERTAINTY.value
    slice_of = {frame.sop_instance_uid: k for k, frame in enumerate(source.frames)}
    expected = findings.uncertainty.astype(np.float32) / UNCERTAINTY_STEPS  # type: ignore[union-attr]
    pixels = back.pixel_array
    for n, group in enumerate(back.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = slice_of[uid]
        assert np.array_equal(pixels[n], expected[k]), n
        assert [float(x) for x in group.PlanePositionSequence[0].ImagePositionPatient] == \
            [float(x) for x in source.datasets[k].ImagePositionPatient]
    # OHIF stacks a map's frames in file order: ascending along the row x column normal.
    orientation = np.asarray(back.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    along = [float(np.dot(np.asarray(g.PlanePositionSequence[0].ImagePositionPatient, float),
                          np.cross(orientation[:3], orientation[3:]))) for g in back.PerFrameFunctionalGroupsSequence]
    assert along == sorted(along)
    assert back.StudyInstanceUID == source.datasets[0].StudyInstanceUID
    assert back.FrameOfReferenceUID == source.datasets[0].FrameOfReferenceUID
    result = processes.run([system_binary("dciodvfy"), str(path)], timeout=120)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_the_same_job_gives_the_same_uids(source: SeriesVolume, findings: Findings) -> None:
    first = build_uncertainty_map(source, findings, "ct:1.2.3:v1", ResultSettings())
    again = build_uncertainty_map(source, findings, "ct:1.2.3:v1", ResultSettings())
    other = build_uncertainty_map(source, findings, "ct:1.2.3:v2", ResultSettings())
    assert first is not None and again is not None and other is not None
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != other.SOPInstanceUID


def test_no_map_without_uncertainty_and_a_clear_error_on_another_grid(source: SeriesVolume, findings: Findings) -> None:
    assert build_uncertainty_map(source, dataclasses.replace(findings, uncertainty=None), "job-b", ResultSettings()) is None
    shifted = dataclasses.replace(findings, uncertainty=findings.uncertainty[1:])  # type: ignore[index]
    with pytest.raises(ValueError, match="differs from the volume"):
        build_uncertainty_map(source, shifted, "job-b", ResultSettings())
