"""Findings -> standard DICOM result objects, with highdicom: a Segmentation (SEG) and a
Comprehensive 3D SR holding a TID 1500 Measurement Report.

What a viewer needs, and how each need is met here:

* The SEG lies in the geometry of its source: one frame per source frame (``empty_frames:
  keep`` is the default; ``omit`` drops frames with no voxel of a segment, which is smaller but
  leaves viewers that match frames by position to guess), each frame references the source
  image it was drawn on, and every segment carries its SNOMED CT category/type, the algorithm
  (name, version, family) and a recommended display colour (OHIF paints every segment red
  without one).
* The SR has one measurement group per segment (TID 1411, volumetric: volume, mean, standard
  deviation, referencing the SEG segment) and one per lesion (TID 1410, planar: the longest
  axial diameter as a polyline on its key slice, with the lesion's volume and score). OHIF
  takes the first child of a NUM item as that measurement's image coordinates (and fails on a
  NUM whose child is, say, an algorithm name), so NUM items carry no children: the algorithm is
  named once per group. Lesion groups carry image coordinates, which is what OHIF draws.
  Classification results are a TID 1501 group of qualitative evaluations (present / absent)
  that references the key image.
* UIDs come from the job's identity (:func:`derive_uid`), so a re-run of a job produces the same
  objects and a PACS replaces them instead of storing duplicates.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
)

from ai.types import Findings, LabelInfo, Measurement

from . import __version__
from .volume import SeriesVolume

MANUFACTURER = "dicom-node"

_UNIT_ML = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
_UNIT_MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
_UNIT_HU = hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
_UNIT_NONE = hd.sr.CodedConcept("1", "UCUM", "no units")
_STANDARD_DEVIATION = hd.sr.CodedConcept("386136009", "SCT", "Standard Deviation")
_PROBABILITY = hd.sr.CodedConcept("PROBABILITY", "99DCMNODE", "Probability of finding")
_PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
_ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
_PROCEDURES = {
    "CT": hd.sr.CodedConcept("77477000", "SCT", "Computed Tomography"),
    "MR": hd.sr.CodedConcept("113091000", "SCT", "Magnetic Resonance Imaging"),
}
_IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")


class EmptyFrames(str, Enum):
    KEEP = "keep"
    OMIT = "omit"


class SegmentationEncoding(str, Enum):
    """How a peer gets its SEG. ``binary`` is what every PACS and viewer accepts today."""

    BINARY = "binary"
    BINARY_JPEG2000 = "binary-jpeg2000"
    LABELMAP = "labelmap"


#: Name space of the name-based (version 5) UUIDs our result UIDs are made of.
_UID_NAMESPACE = uuid.UUID("6f1d2a0e-8d4b-5c1e-9b1e-3c6a1f0e2d4b")


def derive_uid(job_key: str, role: str) -> str:
    """A UID that depends only on the job's identity and the object's role ("seg-series", ...):
    the 2.25 form of a name-based UUID (PS3.5 B.2). (pydicom's ``generate_uid(prefix=None)``
    ignores ``entropy_srcs`` and returns a random UUID, so it cannot be used here.)"""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{job_key}|{role}').int}"


@dataclass(frozen=True)
class ResultSettings:
    """Numbering and identification of result series (from the configuration, never random)."""

    seg_series_number: int = 9001
    sr_series_number: int = 9002
    map_series_number: int = 9003
    device_name: str = "AI_NODE"
    empty_frames: EmptyFrames = EmptyFrames.KEEP


def _coded(code: tuple[str, str, str]) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(*code)


def _algorithm(findings: Findings) -> hd.AlgorithmIdentificationSequence:
    family = codes.cid7162.ArtificialIntelligence if findings.algorithm_family == "Artificial Intelligence" \
        else codes.cid7162.MorphologicalOperations
    return hd.AlgorithmIdentificationSequence(name=findings.model_name, family=family, version=findings.model_version)


def present_labels(findings: Findings) -> list[LabelInfo]:
    """Labels with at least one voxel, in label order: these become the SEG's segments 1..N.

    The pipeline measured every present label already; counting the label map again (0.3 s
    for a 512x512x300 CT) is only the fallback for findings without measurements."""
    values = {m.label for m in findings.measurements if m.lesion_index is None and m.voxel_count}
    if not values and findings.label_map.any():
        values = set(np.flatnonzero(np.bincount(findings.label_map.ravel(), minlength=256)).tolist()) - {0}
    return [info for info in sorted(findings.labels, key=lambda i: i.value) if info.value in values]


def source_frame_order(source: SeriesVolume, array: np.ndarray) -> tuple[np.ndarray, list[Dataset]]:
    """A (k, j, i) array on the source's grid with its frames in the order highdicom pairs them
    with ``source_images``, and those images (a multi-frame source: its frame order)."""
    if source.frames[0].frame_number is None:
        return array, list(source.datasets)
    numbers = [f.frame_number or 0 for f in source.frames]
    total = int(source.datasets[0].get("NumberOfFrames", len(numbers)))
    if len(source.datasets) != 1 or sorted(numbers) != list(range(1, total + 1)):
        raise ValueError("a multi-frame source must be one instance whose every frame is in the volume")
    ordered = np.empty_like(array)
    ordered[np.asarray(numbers) - 1] = array
    return ordered, list(source.datasets)


def _segment_label_map(source: SeriesVolume, findings: Findings, labels: list[LabelInfo]) -> tuple[np.ndarray, list[Dataset]]:
    """The label map as segment numbers, frames in the order of ``source_images``."""
    lut = np.zeros(256, dtype=np.uint8)
    for number, info in enumerate(labels, start=1):
        lut[info.value] = number
    return source_frame_order(source, lut[findings.label_map])


def build_segmentation(
    source: SeriesVolume,
    findings: Findings,
    job_key: str,
    settings: ResultSettings,
    encoding: SegmentationEncoding = SegmentationEncoding.BINARY,
) -> hd.seg.Segmentation | None:
    """A SEG with one segment per label present in ``findings`` (None if nothing was found)."""
    if findings.label_map.shape != source.volume.shape:
        raise ValueError(f"label map shape {findings.label_map.shape} differs from the volume's {source.volume.shape}")
    labels = present_labels(findings)
    if not labels:
        return None
    pixels, source_images = _segment_label_map(source, findings, labels)
    algorithm = _algorithm(findings)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=info.name,
            segmented_property_category=_coded(info.category),
            segmented_property_type=_coded(info.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=derive_uid(job_key, f"segment-{info.value}"),
            tracking_id=info.name,
            display_color=hd.color.CIELabColor.from_rgb(*info.color),
        )
        for number, info in enumerate(labels, start=1)
    ]
    segmentation_type = hd.seg.SegmentationTypeValues.LABELMAP if encoding is SegmentationEncoding.LABELMAP \
        else hd.seg.SegmentationTypeValues.BINARY
    transfer_syntax = JPEG2000Lossless if encoding is SegmentationEncoding.BINARY_JPEG2000 else ExplicitVRLittleEndian
    return hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=pixels,
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions,
        series_instance_uid=derive_uid(job_key, "seg-series"),
        series_number=settings.seg_series_number,
        # A JPEG 2000 SEG is the same object as the BINARY one (only the transfer syntax differs);
        # a Label Map SEG is another SOP class, so another instance.
        sop_instance_uid=derive_uid(job_key, "seg-labelmap" if encoding is SegmentationEncoding.LABELMAP else "seg"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=settings.device_name,
        software_versions=f"dicom-node {__version__}; {findings.model_name} {findings.model_version}",
        device_serial_number=settings.device_name,
        series_description=f"AI segmentation ({findings.model_name} v{findings.model_version})"[:64],
        content_label="AI_SEG",
        content_description=f"{findings.model_name} {findings.model_version}"[:64],
        content_creator_name="dicom-node^AI",
        transfer_syntax_uid=transfer_syntax,
        omit_empty_frames=settings.empty_frames is EmptyFrames.OMIT,
    )


# -- SR -------------------------------------------------------------------------------------


def _key_slice(measurement: Measurement) -> int:
    """The slice an annotation of this measurement is drawn on: its longest diameter's slice."""
    if measurement.diameter_endpoints_kji is not None:
        return int(round(measurement.diameter_endpoints_kji[0][0]))
    return int(round(measurement.centroid_kji[0]))


def _source_for_slice(source: SeriesVolume, k: int) -> hd.sr.SourceImageForRegion:
    ref = source.frames[k]
    frames = [ref.frame_number] if ref.frame_number is not None else None
    return hd.sr.SourceImageForRegion(ref.sop_class_uid, ref.sop_instance_uid, frames)


def _diameter_polyline(measurement: Measurement) -> np.ndarray:
    """The longest axial diameter as two (column, row) image points; a single pixel if none."""
    if measurement.diameter_endpoints_kji is not None:
        (_, j0, i0), (_, j1, i1) = measurement.diameter_endpoints_kji
    else:
        _, j0, i0 = measurement.centroid_kji
        j1, i1 = j0, i0 + 1.0
    # Pixel coordinates: (column, row), 0.5 is the centre of the first pixel (DICOM PS3.3 C.18.6.1.1).
    return np.asarray([[i0 + 0.5, j0 + 0.5], [i1 + 0.5, j1 + 0.5]], dtype=float)


def _intensity_unit(modality: str) -> hd.sr.CodedConcept:
    return _UNIT_HU if modality == "CT" else _UNIT_NONE


def _segment_groups(
    source: SeriesVolume, seg: Dataset, number: int, info: LabelInfo, measurement: Measurement, job_key: str,
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[Any]:
    """A volumetric group (TID 1411: the SEG segment, its volume, mean and SD) and, with the
    same tracking UID, a planar group (TID 1410: the longest axial diameter drawn on its key
    slice). One finding, two views of it: OHIF merges groups by tracking UID and needs image
    coordinates in the merged group (without any, its SR view fails on the group)."""
    unit = _intensity_unit(source.volume.modality)
    tracking = hd.sr.TrackingIdentifier(uid=derive_uid(job_key, f"segment-{info.value}"), identifier=info.name)
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(str(source.datasets[0].SeriesInstanceUID)),
        ),
        finding_type=_coded(info.type),
        finding_category=_coded(info.category),
        algorithm_id=algorithm,
        # Bare NUM items (no children): OHIF reads any child of a NUM as its image coordinates.
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(measurement.volume_ml, 3), unit=_UNIT_ML),
            hd.sr.Measurement(name=codes.SCT.Mean, value=round(measurement.mean, 2), unit=unit),
            hd.sr.Measurement(name=_STANDARD_DEVIATION, value=round(measurement.std, 2), unit=unit),
        ],
    )
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=_diameter_polyline(measurement),
            source_image=_source_for_slice(source, _key_slice(measurement)),
        ),
        finding_type=_coded(info.type),
        finding_category=_coded(info.category),
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Diameter, value=round(measurement.longest_axial_diameter_mm, 2), unit=_UNIT_MM),
        ],
    )
    return [volumetric, planar]


def _lesion_group(
    source: SeriesVolume, info: LabelInfo, measurement: Measurement, job_key: str, algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    key = _source_for_slice(source, _key_slice(measurement))
    measurements = [
        hd.sr.Measurement(name=codes.SCT.LongAxis, value=round(measurement.longest_axial_diameter_mm, 2), unit=_UNIT_MM),
        hd.sr.Measurement(name=codes.SCT.Volume, value=round(measurement.volume_ml, 4), unit=_UNIT_ML),
    ]
    if measurement.score is not None:
        measurements.append(hd.sr.Measurement(name=_PROBABILITY, value=round(measurement.score, 4), unit=_UNIT_NONE))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(job_key, f"lesion-{info.value}-{measurement.lesion_index}"),
            identifier=f"{info.name} {measurement.lesion_index}",
        ),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=_diameter_polyline(measurement), source_image=key
        ),
        finding_type=_coded(info.type),
        finding_category=_coded(info.category),
        algorithm_id=algorithm,
        measurements=measurements,
    )


#: TID 1500 row "Qualitative Evaluations": findings about the whole series, outside any group.
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


def _qualitative_evaluations(findings: Findings) -> hd.sr.ContainerContentItem:
    """The model's classifications as CODE items (present / absent, the score in the meaning);
    "Finding: absent" when nothing at all was found, so the report says so."""
    container = hd.sr.ContainerContentItem(name=_QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    items = [
        hd.sr.CodeContentItem(
            name=hd.sr.CodedConcept(name.upper().replace(" ", "_")[:16], "99DCMNODE", f"{name} (score {findings.scores[name]:.2f})"),
            value=_PRESENT if present else _ABSENT,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        for name, present in sorted(findings.findings.items())
    ]
    if not items and not findings.measurements:
        items.append(hd.sr.CodeContentItem(name=codes.DCM.Finding, value=_ABSENT,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    withheld: dict[str, str] = findings.extra.get("withheld", {})
    for name, value in sorted(findings.extra.get("confidence", {}).items()):
        if name not in withheld:
            items.append(hd.sr.TextContentItem(name=STRUCTURE_CONFIDENCE, value=f"{name}: {value:.2f}",
                                               relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    for name, why in sorted(withheld.items()):
        items.append(hd.sr.TextContentItem(name=WITHHELD, value=f"{name}: {why}"[:1024],
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    container.ContentSequence = items
    return container


#: Per structure the model's confidence (mean winning-class probability), and what was withheld.
STRUCTURE_CONFIDENCE = hd.sr.CodedConcept("STRUCT_CONF", "99DCMNODE", "Structure confidence (mean maximum probability)")
WITHHELD = hd.sr.CodedConcept("WITHHELD", "99DCMNODE", "Withheld from this report")


def _referenced_uids(group: Any) -> set[str]:
    """SOP Instance UIDs of the IMAGE content items anywhere in a measurement group."""
    found: set[str] = set()
    stack = list(group)
    while stack:
        item = stack.pop()
        if item.get("ValueType") == "IMAGE":
            found.update(str(r.ReferencedSOPInstanceUID) for r in item.ReferencedSOPSequence)
        stack.extend(item.get("ContentSequence", []))
    return found


def build_report(
    source: SeriesVolume,
    findings: Findings,
    seg: Dataset | None,
    job_key: str,
    settings: ResultSettings,
) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR with the TID 1500 Measurement Report of ``findings``."""
    algorithm = hd.sr.AlgorithmIdentification(name=findings.model_name, version=findings.model_version)
    groups: list[object] = []
    if seg is not None:
        numbers = {info.value: n for n, info in enumerate(present_labels(findings), start=1)}
        for measurement in findings.measurements:
            if measurement.lesion_index is None and measurement.label in numbers and measurement.voxel_count:
                info = findings.label(measurement.label)
                groups.extend(_segment_groups(source, seg, numbers[measurement.label], info, measurement, job_key, algorithm))
    for measurement in findings.measurements:
        if measurement.lesion_index is not None and measurement.voxel_count:
            groups.append(_lesion_group(source, findings.label(measurement.label), measurement, job_key, algorithm))

    report = _measurement_report(source, settings, f"{findings.model_name} {findings.model_version}", groups,
                                 derive_uid(job_key, "nothing"), "nothing found")
    evaluations = _qualitative_evaluations(findings)
    if evaluations.ContentSequence:
        report[0].ContentSequence.append(evaluations)
    # Evidence: the SEG and the source images the content references (key slices). The whole
    # source series is referenced through the SEG (and each segment group's source series);
    # listing all its instances again costs time and says nothing more.
    referenced = set().union(*(_referenced_uids(group) for group in groups))
    evidence: list[Dataset] = [ds for ds in source.datasets if str(ds.SOPInstanceUID) in referenced]
    if seg is not None:
        evidence.append(seg)
    if not evidence:  # nothing found: the report is about the whole source series
        evidence = list(source.datasets)
    return _report_object(evidence, report, settings, derive_uid(job_key, "sr-series"), derive_uid(job_key, "sr"),
                          f"AI measurements ({findings.model_name} v{findings.model_version})")


def _measurement_report(source: SeriesVolume, settings: ResultSettings, model: str | None, groups: list[object],
                        placeholder_uid: str, placeholder: str) -> hd.sr.MeasurementReport:
    """TID 1500 observed by this node (as the device running ``model``). Without measurement
    groups it holds Qualitative Evaluations only (highdicom insists on an Imaging Measurements
    container, so a placeholder is built and removed again)."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid(f"device:{settings.device_name}", "observer"),
            name=settings.device_name,
            manufacturer_name=MANUFACTURER,
            model_name=model[:64] if model else None,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURES.get(source.volume.modality, _IMAGING_PROCEDURE),
        imaging_measurements=groups or [hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=placeholder_uid, identifier=placeholder))],
    )
    if not groups:
        report[0].ContentSequence = [item for item in report[0].ContentSequence
                                     if item.ConceptNameCodeSequence[0].CodeValue != "126010"]
    return report


def _report_object(evidence: list[Dataset], report: hd.sr.MeasurementReport, settings: ResultSettings,
                   series_uid: str, sop_uid: str, description: str) -> hd.sr.Comprehensive3DSR:
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_uid,
        series_number=settings.sr_series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=description[:64],
    )


#: "Not analysed": what the node says to a PACS when no pipeline of a route may analyse a series.
NOT_ANALYSED = hd.sr.CodedConcept("NOT_ANALYSED", "99DCMNODE", "Not analysed by AI")


def build_declined_report(source: SeriesVolume, declined: Sequence[tuple[str, str]], job_key: str,
                          settings: ResultSettings) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report that measures nothing and says why: one TEXT item per declining model
    ("ct-organs 2.0.0: <reasons>") under Qualitative Evaluations, and "Finding: not analysed"
    is never confused with "absent". It references every instance of the series, so a viewer
    shows it with the series the AI looked at and declined."""
    report = _measurement_report(source, settings, None, [], derive_uid(job_key, "declined"), "not analysed")
    container = hd.sr.ContainerContentItem(name=_QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = [
        hd.sr.TextContentItem(name=NOT_ANALYSED, value=f"not analysed by {model}: {reasons}"[:1024],
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for model, reasons in declined
    ]
    report[0].ContentSequence.append(container)
    names = ", ".join(model.split()[0] for model, _ in declined)
    return _report_object(list(source.datasets), report, settings, derive_uid(job_key, "declined-series"),
                          derive_uid(job_key, "declined"), f"AI not analysed ({names})")


def segmentation_variants(encodings: Sequence[SegmentationEncoding]) -> list[SegmentationEncoding]:
    """The encodings to build for a peer, preferred first, always ending with plain BINARY so a
    peer that refuses the others at association still gets a SEG."""
    ordered = [e for e in dict.fromkeys(encodings) if e is not SegmentationEncoding.BINARY]
    return [*ordered, SegmentationEncoding.BINARY]


__all__ = [
    "NOT_ANALYSED", "EmptyFrames", "ResultSettings", "SegmentationEncoding", "build_declined_report", "build_report",
    "build_segmentation", "derive_uid",
    "present_labels", "segmentation_variants",
]
