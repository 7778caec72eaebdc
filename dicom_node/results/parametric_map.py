"""The model's per-voxel uncertainty as a DICOM Parametric Map, for the reader to see where the
AI was unsure (the "algorithm interpretability" a radiologist asks for).

Why a Parametric Map and not a FRACTIONAL Segmentation: OHIF 3.13 refuses fractional SEGs
("Fractional segmentations are not yet supported", cornerstone adapters), and opens a
Parametric Map as a colour overlay on its source series. What OHIF needs, and how it is met:

* one frame per source image, same rows and columns, each frame referencing its source image
  (per-frame Derivation Image Sequence: highdicom writes it);
* 32-bit float pixel data holding the value itself: OHIF ignores the Real World Value Mapping,
  multiplies the values by 100 and windows 0-100 (a uint16 map would overflow there);
* frames in the order OHIF builds its volume: ascending along the normal (row x column) of the
  source images. OHIF takes a Parametric Map's frames in file order and does not place them
  by their references or positions (cornerstone adapters' generateToolState returns the
  unsorted pixel data), while highdicom writes them in the opposite order: built as highdicom
  writes them, OHIF shows the map upside down along the patient's axis. Reordering whole
  frames (pixels with their per-frame functional groups) keeps the object as valid as before;
* uncertainty (1 - the probability of the class the model chose), not confidence: OHIF's
  overlay is transparent at 0 and opaque towards 1, so the anatomy shows where the model was
  sure and colour marks where it was not.

Size: 4 bytes per source voxel (315 MB for 512 x 512 x 300), which is why the map is optional
(``results.uncertainty_map``).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ai.types import UNCERTAINTY_STEPS, Findings

from .. import __version__
from ..storage.volume import SeriesVolume
from .identity import (
    MANUFACTURER,
    Algorithm,
    ResultSettings,
    analysis_started,
    contributing_equipment,
    derive_uid,
    set_content_datetime,
)
from .seg import source_frame_order
from .units import NO_UNITS

#: What the values mean: no standard code names a model's uncertainty, so a private one, with
#: its meaning in the Real World Value Mapping's explanation.
UNCERTAINTY = hd.sr.CodedConcept("UNCERTAINTY", "99DCMNODE", "Model uncertainty (1 - winning class probability)")


def uncertainty_values(findings: Findings) -> np.ndarray:
    """The uncertainty as float32 in [0, 1] on the label map's grid."""
    if findings.uncertainty is None:
        raise ValueError(f"{findings.model_name} gave no per-voxel uncertainty")
    return findings.uncertainty.astype(np.float32) / UNCERTAINTY_STEPS


def build_uncertainty_map(source: SeriesVolume, findings: Findings, job_key: str,
                          settings: ResultSettings) -> hd.pm.ParametricMap | None:
    """The Parametric Map of ``findings.uncertainty`` over ``source`` (None when the pipeline
    gave none: the classical baseline has no probabilities to show)."""
    if findings.uncertainty is None:
        return None
    if findings.uncertainty.shape != source.volume.shape:
        raise ValueError(f"uncertainty shape {findings.uncertainty.shape} differs from the volume's {source.volume.shape}")
    pixels, source_images = source_frame_order(source, uncertainty_values(findings))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="UNCERTAINTY",
        lut_explanation=f"1 - probability of the chosen class ({findings.model_name} {findings.model_version})"[:64],
        unit=NO_UNITS,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=UNCERTAINTY,
    )
    pm = hd.pm.ParametricMap(
        source_images=source_images,
        pixel_array=pixels,
        series_instance_uid=derive_uid(job_key, "uncertainty-series"),
        series_number=settings.map_series_number,
        sop_instance_uid=derive_uid(job_key, "uncertainty"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=settings.device_name,
        software_versions=f"dicom-node {__version__}; {findings.model_name} {findings.model_version}",
        device_serial_number=settings.device_name,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="AI_UNCERTAINTY",
        content_description=f"uncertainty of {findings.model_name} {findings.model_version}"[:64],
        content_creator_name="dicom-node^AI",
        series_description=f"AI uncertainty ({findings.model_name} v{findings.model_version})"[:64],
        contributing_equipment=contributing_equipment([Algorithm.of(findings)], settings, analysis_started(findings)),
    )
    set_content_datetime(pm, analysis_started(findings))
    # General Series' Laterality is Type 2C (paired body parts); dciodvfy wants it on a map of
    # any body part: the source's value, else present and empty.
    pm.Laterality = source.datasets[0].get("Laterality", "")
    frames_along_normal(pm)
    return pm


def frames_along_normal(pm: Dataset) -> None:
    """Put a float Parametric Map's frames (pixels and per-frame functional groups together)
    in ascending order of their position along the row x column normal, in place."""
    shared = pm.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    groups = list(pm.PerFrameFunctionalGroupsSequence)
    distances = [float(np.dot(np.asarray(g.PlanePositionSequence[0].ImagePositionPatient, dtype=float), normal)) for g in groups]
    order = np.argsort(distances, kind="stable")
    if (order == np.arange(len(order))).all():
        return
    frames = np.frombuffer(pm.FloatPixelData, dtype="<f4").reshape(len(groups), -1)
    pm.FloatPixelData = frames[order].tobytes()
    pm.PerFrameFunctionalGroupsSequence = Sequence([groups[i] for i in order])
