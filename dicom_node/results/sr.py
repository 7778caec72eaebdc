"""Findings -> a Comprehensive 3D SR holding a TID 1500 Measurement Report, with highdicom.

One measurement group per segment (TID 1411, volumetric: volume, mean, standard deviation,
referencing the SEG segment) and one per lesion (TID 1410, planar: the longest axial diameter as
a polyline on its key slice, with the lesion's volume and score). OHIF takes the first child of
a NUM item as that measurement's image coordinates (and fails on a NUM whose child is, say, an
algorithm name), so NUM items carry no children: the algorithm is named once per group. Lesion
groups carry image coordinates, which is what OHIF draws. Each classification result is a TID 1501
group of its own (tracking identifier and UID, present / absent) and is repeated among the
report's Qualitative Evaluations. A series the
node declined gets a report that says so and why (:func:`build_declined_report`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ai.types import Findings, LabelInfo, Measurement

from ..storage.volume import SeriesVolume
from .identity import (
    MANUFACTURER,
    Algorithm,
    ResultSettings,
    analysis_started,
    coded,
    contributing_equipment,
    derive_uid,
    present_labels,
    set_content_datetime,
    sr_algorithm,
)
from .lung_items import lung_conditions, lung_measurements, lung_withheld
from .units import HOUNSFIELD, MILLILITER, MILLIMETER, NO_UNITS

#: SNOMED CT Lung: the segment whose groups carry the lung densitometry.
LUNG = "39607008"

_STANDARD_DEVIATION = hd.sr.CodedConcept("386136009", "SCT", "Standard Deviation")


_PROBABILITY = hd.sr.CodedConcept("PROBABILITY", "99DCMNODE", "Probability of finding")


_PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")


_ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")


_PROCEDURES = {
    "CT": hd.sr.CodedConcept("77477000", "SCT", "Computed Tomography"),
    "MR": hd.sr.CodedConcept("113091000", "SCT", "Magnetic Resonance Imaging"),
}


_IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")


def procedure_reported(source: SeriesVolume) -> list[hd.sr.CodedConcept]:
    """The imaging procedure analysed: the study's own Procedure Code Sequence where the
    scheduling system filled it (what the RIS calls the exam), then the modality's procedure
    (SNOMED CT Computed Tomography, Magnetic Resonance Imaging) or Imaging procedure."""
    first = source.datasets[0]
    reported = [hd.sr.CodedConcept(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning)[:64])
                for item in first.get("ProcedureCodeSequence", []) if item.get("CodeValue") and item.get("CodeMeaning")]
    return [*reported, _PROCEDURES.get(source.volume.modality, _IMAGING_PROCEDURE)]


def _key_slice(measurement: Measurement) -> int:
    """The slice an annotation of this measurement is drawn on: its longest diameter's slice,
    else the slice of its anchor (a voxel of the structure near its centroid)."""
    if measurement.diameter_endpoints_kji is not None:
        return int(round(measurement.diameter_endpoints_kji[0][0]))
    return int(round((measurement.anchor_kji or measurement.centroid_kji)[0]))


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


def _region(source: SeriesVolume, measurement: Measurement) -> hd.sr.ImageRegion:
    """Where a viewer draws the finding: its longest axial diameter on its key slice, or, for a
    row without one (several structures together), a point on the structure near its centroid."""
    image = _source_for_slice(source, _key_slice(measurement))
    if measurement.longest_axial_diameter_mm is not None:
        return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                 graphic_data=_diameter_polyline(measurement), source_image=image)
    _, j, i = measurement.anchor_kji or measurement.centroid_kji
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT,
                             graphic_data=np.asarray([[i + 0.5, j + 0.5]], dtype=float), source_image=image)


_LATERALITY = {"left": hd.sr.CodedConcept("7771000", "SCT", "Left"), "right": hd.sr.CodedConcept("24028007", "SCT", "Right")}


def _intensity_unit(modality: str) -> hd.sr.CodedConcept:
    return HOUNSFIELD if modality == "CT" else NO_UNITS


def _segment_groups(
    source: SeriesVolume, seg: Dataset, number: int, info: LabelInfo, measurement: Measurement, job_key: str,
    algorithm: hd.sr.AlgorithmIdentification, extra: Sequence[hd.sr.Measurement] = (),
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
        finding_type=coded(info.type),
        finding_category=coded(info.category),
        algorithm_id=algorithm,
        # Bare NUM items (no children): OHIF reads any child of a NUM as its image coordinates.
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(measurement.volume_ml, 3), unit=MILLILITER),
            hd.sr.Measurement(name=codes.SCT.Mean, value=round(measurement.mean, 2), unit=unit),
            hd.sr.Measurement(name=_STANDARD_DEVIATION, value=round(measurement.std, 2), unit=unit),
            *extra,
        ],
    )
    diameter = measurement.longest_axial_diameter_mm
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=_region(source, measurement),
        finding_type=coded(info.type),
        finding_category=coded(info.category),
        algorithm_id=algorithm,
        # A diameter only across one connected structure; a row of several carries none.
        measurements=None if diameter is None else [
            hd.sr.Measurement(name=codes.SCT.Diameter, value=round(diameter, 2), unit=MILLIMETER)],
    )
    return [volumetric, planar]


def _side_group(
    source: SeriesVolume, info: LabelInfo, measurement: Measurement, job_key: str, algorithm: hd.sr.AlgorithmIdentification,
    extra: Sequence[hd.sr.Measurement] = (),
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One side of a paired organ (TID 1410: "left kidney"): its Finding Site with laterality,
    its longest axial diameter drawn on its key slice, its volume, mean and SD."""
    assert measurement.side is not None
    unit = _intensity_unit(source.volume.modality)
    items = [] if measurement.longest_axial_diameter_mm is None else [
        hd.sr.Measurement(name=codes.SCT.Diameter, value=round(measurement.longest_axial_diameter_mm, 2), unit=MILLIMETER)]
    items += [
        hd.sr.Measurement(name=codes.SCT.Volume, value=round(measurement.volume_ml, 3), unit=MILLILITER),
        hd.sr.Measurement(name=codes.SCT.Mean, value=round(measurement.mean, 2), unit=unit),
        hd.sr.Measurement(name=_STANDARD_DEVIATION, value=round(measurement.std, 2), unit=unit),
        *extra,
    ]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derive_uid(job_key, f"side-{info.value}-{measurement.side}"),
                                                     identifier=measurement.name),
        referenced_region=_region(source, measurement),
        finding_type=coded(info.type),
        finding_category=coded(info.category),
        finding_sites=[hd.sr.FindingSite(anatomic_location=coded(info.type), laterality=_LATERALITY[measurement.side])],
        algorithm_id=algorithm,
        measurements=items,
    )


def _lesion_group(
    source: SeriesVolume, info: LabelInfo, measurement: Measurement, job_key: str, algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    measurements = [
        hd.sr.Measurement(name=codes.SCT.LongAxis, value=round(measurement.longest_axial_diameter_mm or 0.0, 2), unit=MILLIMETER),
        hd.sr.Measurement(name=codes.SCT.Volume, value=round(measurement.volume_ml, 4), unit=MILLILITER),
    ]
    if measurement.score is not None:
        measurements.append(hd.sr.Measurement(name=_PROBABILITY, value=round(measurement.score, 4), unit=NO_UNITS))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(job_key, f"lesion-{info.value}-{measurement.lesion_index}"),
            identifier=f"{info.name} {measurement.lesion_index}",
        ),
        referenced_region=_region(source, measurement),
        finding_type=coded(info.type),
        finding_category=coded(info.category),
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _classification_groups(findings: Findings, job_key: str,
                           algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Each classification finding ("liver lesion present") as a TID 1501 group of its own, with
    a tracking identifier and UID (IHE AI Results: every finding is trackable), the algorithm,
    and the present/absent evaluation with its score."""
    return [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=derive_uid(job_key, f"finding-{name}"), identifier=name),
            algorithm_id=algorithm,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=hd.sr.CodedConcept(name.upper().replace(" ", "_")[:16], "99DCMNODE", f"{name} (score {findings.scores[name]:.2f})"),
                value=_PRESENT if present else _ABSENT)],
        )
        for name, present in sorted(findings.findings.items())
    ]


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
    withheld: dict[str, str] = {**findings.extra.get("withheld", {}), **lung_withheld(findings)}
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
    algorithm = sr_algorithm(Algorithm.of(findings))
    groups: list[object] = []
    if seg is not None:
        numbers = {info.value: n for n, info in enumerate(present_labels(findings), start=1)}
        for measurement in findings.measurements:
            if measurement.kind == "label" and measurement.label in numbers and measurement.voxel_count:
                info = findings.label(measurement.label)
                groups.extend(_segment_groups(source, seg, numbers[measurement.label], info, measurement, job_key, algorithm,
                                              lung_measurements(findings, None) if info.type[0] == LUNG else ()))
    for measurement in findings.measurements:
        if measurement.side is not None and measurement.voxel_count:
            info = findings.label(measurement.label)
            groups.append(_side_group(source, info, measurement, job_key, algorithm,
                                      lung_measurements(findings, measurement.side) if info.type[0] == LUNG else ()))
    for measurement in findings.measurements:
        if measurement.lesion_index is not None and measurement.voxel_count:
            groups.append(_lesion_group(source, findings.label(measurement.label), measurement, job_key, algorithm))
    groups.extend(_classification_groups(findings, job_key, algorithm))

    report = _measurement_report(source, settings, f"{findings.model_name} {findings.model_version}", groups,
                                 derive_uid(job_key, "nothing"), "nothing found")
    evaluations = _qualitative_evaluations(findings)
    evaluations.ContentSequence.extend(lung_conditions(findings, source.datasets[0]))
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
                          f"AI measurements ({findings.model_name} v{findings.model_version})", [Algorithm.of(findings)],
                          analysis_started(findings))


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
        procedure_reported=procedure_reported(source),
        imaging_measurements=groups or [hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=placeholder_uid, identifier=placeholder))],
    )
    if not groups:
        report[0].ContentSequence = [item for item in report[0].ContentSequence
                                     if item.ConceptNameCodeSequence[0].CodeValue != "126010"]
    return report


def _report_object(evidence: list[Dataset], report: hd.sr.MeasurementReport, settings: ResultSettings,
                   series_uid: str, sop_uid: str, description: str, algorithms: Sequence[Algorithm],
                   started: datetime | None) -> hd.sr.Comprehensive3DSR:
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_uid,
        series_number=settings.sr_series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=description[:64],
        contributing_equipment=contributing_equipment(algorithms, settings, started),
    )
    set_content_datetime(sr, started)
    return sr


#: "Not analysed": what the node says to a PACS when no pipeline of a route may analyse a series.
NOT_ANALYSED = hd.sr.CodedConcept("NOT_ANALYSED", "99DCMNODE", "Not analysed by AI")


def build_declined_report(source: SeriesVolume, declined: Sequence[tuple[Algorithm, str]], job_key: str,
                          settings: ResultSettings, started: datetime | None = None) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report that measures nothing and says why: one TEXT item per declining model
    ("ct-organs 2.0.0: <reasons>") under Qualitative Evaluations, and "Finding: not analysed"
    is never confused with "absent". It references every instance of the series, so a viewer
    shows it with the series the AI looked at and declined; each declining algorithm is a
    Contributing Equipment item, as for a report that measured."""
    report = _measurement_report(source, settings, None, [], derive_uid(job_key, "declined"), "not analysed")
    container = hd.sr.ContainerContentItem(name=_QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = [
        hd.sr.TextContentItem(name=NOT_ANALYSED, value=f"not analysed by {algorithm.name} {algorithm.version}: {reasons}"[:1024],
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for algorithm, reasons in declined
    ]
    report[0].ContentSequence.append(container)
    names = ", ".join(algorithm.name for algorithm, _ in declined)
    return _report_object(list(source.datasets), report, settings, derive_uid(job_key, "declined-series"),
                          derive_uid(job_key, "declined"), f"AI not analysed ({names})", [a for a, _ in declined], started)
