"""Findings -> a Segmentation (SEG), with highdicom, in the geometry of its source.

One frame per source frame (``empty_frames: keep`` is the default; ``omit`` drops frames with
no voxel of a segment, which is smaller but leaves viewers that match frames by position to
guess); each frame references the source image it was drawn on, and every segment carries its
SNOMED CT category/type, the algorithm (name, version, family) and a recommended display
colour (OHIF paints every segment red without one)."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from ai.types import Findings, LabelInfo

from .. import __version__
from ..storage.volume import SeriesVolume
from .identity import (
    MANUFACTURER,
    Algorithm,
    EmptyFrames,
    ResultSettings,
    SegmentationEncoding,
    algorithm_identification,
    analysis_started,
    coded,
    contributing_equipment,
    derive_uid,
    present_labels,
    set_content_datetime,
)


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
    algorithm = algorithm_identification(findings)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=info.name,
            segmented_property_category=coded(info.category),
            segmented_property_type=coded(info.type),
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
    seg = hd.seg.Segmentation(
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
        contributing_equipment=contributing_equipment([Algorithm.of(findings)], settings, analysis_started(findings)),
    )
    set_content_datetime(seg, analysis_started(findings))
    return seg
