"""SEG and SR encoding: valid (dciodvfy), read back with highdicom equal to what was computed,
deterministic UIDs, per-peer encodings."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import JPEG2000Lossless

from ai.measure import measure_all
from ai.phantom import Phantom, make_phantom
from ai.registry import ModelRegistry
from ai.types import Findings
from dicom_node.results import (
    EmptyFrames,
    ResultSettings,
    SegmentationEncoding,
    build_report,
    build_segmentation,
    derive_uid,
    present_labels,
    segmentation_variants,
)
from dicom_node.storage.volume import SeriesVolume, load_series
from dicom_node.tools.synthetic import write_volume_series

from ..support import processes
from ..support.peers import system_binary


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(5, shape=(40, 96, 96), spacing=(2.5, 2.5, 2.5), liver_lesions=(2, 2), lung_nodules=(1, 1))


@pytest.fixture(scope="module")
def source(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> SeriesVolume:
    return load_series(write_volume_series(phantom.volume, tmp_path_factory.mktemp("src"), seed=5))


@pytest.fixture(scope="module")
def findings(phantom: Phantom, source: SeriesVolume) -> Findings:
    """The phantom's ground truth as a model's findings (every label and lesion present)."""
    labels = ModelRegistry().get("ct-organs").label_infos()
    measurements = measure_all(phantom.labels, source.volume, labels, lambda label, idx: 0.9)
    return Findings(phantom.labels, labels, tuple(measurements), {"liver lesion present": 0.9}, {"liver lesion present": True},
                    "ct-organs", "1.0.0")


def dciodvfy_errors(ds: object, path: Path) -> list[str]:
    ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
    result = processes.run([system_binary("dciodvfy"), str(path)], timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_seg_pixels_equal_the_label_map_and_pass_dciodvfy(source: SeriesVolume, findings: Findings, tmp_path: Path) -> None:
    seg = build_segmentation(source, findings, "job-a", ResultSettings())
    assert seg is not None
    assert dciodvfy_errors(seg, tmp_path / "seg.dcm") == []
    labels = present_labels(findings)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == [info.name for info in labels]
    # Every segment has its colour, codes and algorithm.
    for description, info in zip(seg.SegmentSequence, labels):
        assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == info.type[0]
        assert hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb() == pytest.approx(info.color, abs=1)
        assert description.SegmentAlgorithmName == "ct-organs"
    # Geometry of the source: one frame per source frame and segment ("keep" empty frames).
    assert seg.NumberOfFrames == len(source.frames) * len(labels)
    read = hd.seg.segread(tmp_path / "seg.dcm")
    uids = [f.sop_instance_uid for f in source.frames]
    pixels = read.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, relabel=False)
    expected = np.zeros_like(findings.label_map)
    for number, info in enumerate(labels, start=1):
        expected[findings.label_map == info.value] = number
    assert np.array_equal(pixels, expected)
    assert str(seg.StudyInstanceUID) == str(source.datasets[0].StudyInstanceUID)
    assert str(seg.SeriesDescription) == "AI segmentation (ct-organs v1.0.0)"


def test_seg_variants_jpeg2000_same_instance_labelmap_and_omitted_frames(source: SeriesVolume, findings: Findings, tmp_path: Path) -> None:
    binary = build_segmentation(source, findings, "job-a", ResultSettings())
    j2k = build_segmentation(source, findings, "job-a", ResultSettings(), SegmentationEncoding.BINARY_JPEG2000)
    labelmap = build_segmentation(source, findings, "job-a", ResultSettings(), SegmentationEncoding.LABELMAP)
    omitted = build_segmentation(source, findings, "job-a", ResultSettings(empty_frames=EmptyFrames.OMIT))
    assert binary is not None and j2k is not None and labelmap is not None and omitted is not None
    assert j2k.SOPInstanceUID == binary.SOPInstanceUID and j2k.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert dciodvfy_errors(j2k, tmp_path / "j2k.dcm") == []
    assert labelmap.SOPInstanceUID != binary.SOPInstanceUID and labelmap.SegmentationType == "LABELMAP"
    assert omitted.NumberOfFrames < binary.NumberOfFrames
    for ds, name in ((j2k, "j2k"), (labelmap, "labelmap")):
        read = hd.seg.segread(tmp_path / f"{name}.dcm") if name == "j2k" else hd.seg.Segmentation.from_dataset(labelmap)
        pixels = read.get_pixels_by_source_instance(source_sop_instance_uids=[f.sop_instance_uid for f in source.frames],
                                                    combine_segments=True, relabel=False)
        assert np.array_equal(pixels > 0, findings.label_map > 0), name
    assert segmentation_variants([SegmentationEncoding.LABELMAP, SegmentationEncoding.BINARY]) == \
        [SegmentationEncoding.LABELMAP, SegmentationEncoding.BINARY]


def test_uids_derive_from_the_job_identity(source: SeriesVolume, findings: Findings) -> None:
    first = build_segmentation(source, findings, "ct:1.2.3:v1", ResultSettings())
    again = build_segmentation(source, findings, "ct:1.2.3:v1", ResultSettings())
    other = build_segmentation(source, findings, "ct:1.2.3:v2", ResultSettings())
    assert first is not None and again is not None and other is not None
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != other.SOPInstanceUID
    assert first.SOPInstanceUID == derive_uid("ct:1.2.3:v1", "seg")
    assert first.SOPInstanceUID.startswith("2.25.")


def test_sr_measurements_equal_the_computed_ones_and_pass_dciodvfy(source: SeriesVolume, findings: Findings, tmp_path: Path) -> None:
    seg = build_segmentation(source, findings, "job-a", ResultSettings())
    sr = build_report(source, findings, seg, "job-a", ResultSettings())
    assert dciodvfy_errors(sr, tmp_path / "sr.dcm") == []
    read = hd.sr.srread(tmp_path / "sr.dcm")
    assert str(read.SeriesDescription) == "AI measurements (ct-organs v1.0.0)"
    organs = {m.name: m for m in findings.measurements if m.kind == "label"}
    groups = read.content.get_volumetric_roi_measurement_groups()
    assert {str(g.tracking_identifier) for g in groups} == set(organs)
    for group in groups:
        expected = organs[str(group.tracking_identifier)]
        assert group.get_measurements(name=codes.SCT.Volume)[0].value == pytest.approx(expected.volume_ml, abs=1e-3)
        assert group.get_measurements(name=codes.SCT.Mean)[0].value == pytest.approx(expected.mean, abs=0.01)
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID  # type: ignore[union-attr]
        # OHIF reads a NUM item's first child as its coordinates: NUM items have none.
        for item in group[0].ContentSequence:
            if item.ValueType == "NUM":
                assert "ContentSequence" not in item
    # Each segment's volumetric group has a planar twin with the same tracking UID: OHIF merges
    # groups by tracking UID and draws the twin. The twin carries the longest axial diameter
    # only when the segment is one connected structure (the liver); a segment of several (both
    # lungs, both kidneys, every lesion) is pointed at on one of its parts and measured per part.
    planar = read.content.get_planar_roi_measurement_groups()
    twins = {str(g.tracking_identifier): g for g in planar if str(g.tracking_identifier) in organs}
    assert set(twins) == set(organs)
    assert any(m.longest_axial_diameter_mm is None for m in organs.values())
    assert any(m.longest_axial_diameter_mm is not None for m in organs.values())
    for group in groups:
        twin = twins[str(group.tracking_identifier)]
        expected = organs[str(group.tracking_identifier)]
        assert twin.tracking_uid == group.tracking_uid
        if expected.longest_axial_diameter_mm is None:
            assert twin.get_measurements() == [] and twin.roi.GraphicType == "POINT"  # type: ignore[union-attr]
            continue
        assert twin.get_measurements(name=codes.SCT.Diameter)[0].value == pytest.approx(expected.longest_axial_diameter_mm, abs=0.01)
    # Each side of a paired organ: its own group with Finding Site and laterality, its diameter.
    sides = {m.name: m for m in findings.measurements if m.kind == "side"}
    assert {"left lung", "right lung", "left kidney", "right kidney"} <= set(sides)
    side_groups = {str(g.tracking_identifier): g for g in planar if str(g.tracking_identifier) in sides}
    assert set(side_groups) == set(sides)
    for name, group in side_groups.items():
        site = group.finding_sites[0]
        assert site.laterality.meaning == name.split()[0].capitalize()
        assert group.get_measurements(name=codes.SCT.Diameter)[0].value == pytest.approx(sides[name].longest_axial_diameter_mm, abs=0.01)
        assert group.get_measurements(name=codes.SCT.Volume)[0].value == pytest.approx(sides[name].volume_ml, abs=1e-3)
    lesions = [m for m in findings.measurements if m.lesion_index is not None]
    lesion_groups = [g for g in planar if str(g.tracking_identifier) not in organs and str(g.tracking_identifier) not in sides]
    assert len(lesion_groups) == len(lesions) >= 1
    for group, lesion in zip(lesion_groups, lesions, strict=True):
        assert group.get_measurements(name=codes.SCT.LongAxis)[0].value == pytest.approx(lesion.longest_axial_diameter_mm, abs=0.01)
        assert group.get_measurements(name=codes.SCT.Volume)[0].value == pytest.approx(lesion.volume_ml, abs=1e-4)
        region = group.roi
        assert region is not None and region.GraphicType == "POLYLINE"
        key = source.frames[int(round(lesion.diameter_endpoints_kji[0][0]))]  # type: ignore[index]
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == key.sop_instance_uid
    # The classification is a qualitative evaluation of the report; the device is the observer.
    evaluations = [item for item in read.ContentSequence if item.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    assert [(e.ConceptNameCodeSequence[0].CodeMeaning, e.ConceptCodeSequence[0].CodeMeaning)
            for e in evaluations[0].ContentSequence] == [("liver lesion present (score 0.90)", "Present")]
    assert read.content.get_observer_contexts()[0].observer_type == codes.DCM.Device


def test_nothing_found_gives_no_seg_and_an_sr_without_groups(source: SeriesVolume, findings: Findings, tmp_path: Path) -> None:
    empty = Findings(np.zeros_like(findings.label_map), findings.labels, (), {}, {}, "ct-organs", "1.0.0")
    assert build_segmentation(source, empty, "job-b", ResultSettings()) is None
    sr = build_report(source, empty, None, "job-b", ResultSettings())
    assert dciodvfy_errors(sr, tmp_path / "sr.dcm") == []
    names = [item.ConceptNameCodeSequence[0].CodeMeaning for item in sr.ContentSequence]
    assert "Imaging Measurements" not in names and "Qualitative Evaluations" in names


def _rotation(degrees_about_z: float, degrees_about_x: float) -> np.ndarray:
    a, b = np.radians(degrees_about_z), np.radians(degrees_about_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.mark.parametrize("layout", ["axial", "oblique", "shuffled"])
def test_every_seg_frame_lies_on_the_source_image_it_references(layout: str, tmp_path: Path) -> None:
    """Geometry, independent of any viewer: each SEG frame's position and orientation equal
    those of its referenced source image, whatever the slice direction or file order."""
    from ai.types import Volume

    phantom = make_phantom(8, shape=(24, 64, 64), spacing=(3.0, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    volume = phantom.volume
    if layout == "oblique":
        volume = Volume(volume.voxels, volume.spacing, (-90.0, -120.0, 35.0), _rotation(20, 25))
    files = write_volume_series(volume, tmp_path / "src", seed=8)
    if layout == "shuffled":  # instance numbers and file order no longer follow the slices
        import random

        from pydicom import dcmread as read

        order = list(range(len(files)))
        random.Random(8).shuffle(order)
        for path, number in zip(files, order, strict=True):
            ds = read(path)
            ds.InstanceNumber = number + 1
            ds.save_as(path, enforce_file_format=True)
        files = [files[i] for i in order]
    source = load_series(files)
    labels = ModelRegistry().get("ct-organs").label_infos()
    findings = Findings(phantom.labels, labels, tuple(measure_all(phantom.labels, source.volume, labels)), {}, {},
                        "ct-organs", "1.0.0")
    seg = build_segmentation(source, findings, "geometry", ResultSettings())
    assert seg is not None
    sources = {str(ds.SOPInstanceUID): ds for ds in source.datasets}
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = [float(x) for x in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    checked = 0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        reference = sources[uid]
        assert [float(x) for x in frame.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            [float(x) for x in reference.ImagePositionPatient], abs=1e-3)
        assert orientation == pytest.approx([float(x) for x in reference.ImageOrientationPatient], abs=1e-5)
        checked += 1
    assert checked == seg.NumberOfFrames == len(source.frames) * len(present_labels(findings))
    # And the pixels drawn on each source image are that image's slice of the label map.
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    read = hd.seg.segread(tmp_path / "seg.dcm")
    pixels = read.get_pixels_by_source_instance(source_sop_instance_uids=[f.sop_instance_uid for f in source.frames],
                                                combine_segments=True, relabel=False)
    expected = np.zeros_like(findings.label_map)
    for number, info in enumerate(present_labels(findings), start=1):
        expected[findings.label_map == info.value] = number
    assert np.array_equal(pixels, expected)


def test_the_report_carries_each_structure_confidence_and_what_was_withheld(source: SeriesVolume, findings: Findings,
                                                                           tmp_path: Path) -> None:
    import dataclasses

    told = dataclasses.replace(findings, extra={"confidence": {"lungs": 0.991, "liver": 0.97, "spleen": 0.62},
                                                "withheld": {"spleen": "confidence 0.62 under 0.80"}})
    seg = build_segmentation(source, told, "job-c", ResultSettings())
    sr = build_report(source, told, seg, "job-c", ResultSettings())
    assert dciodvfy_errors(sr, tmp_path / "sr.dcm") == []
    items = [(str(i.ConceptNameCodeSequence[0].CodeValue), str(i.TextValue)) for i in sr.ContentSequence[-1].ContentSequence
             if i.ValueType == "TEXT"]
    assert items == [("STRUCT_CONF", "liver: 0.97"), ("STRUCT_CONF", "lungs: 0.99"),
                     ("WITHHELD", "spleen: confidence 0.62 under 0.80")]
