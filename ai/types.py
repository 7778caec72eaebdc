"""The seam between the DICOM side and the numeric side: ``Volume`` in, ``Findings`` out.

Nothing here knows DICOM. A ``Volume`` is a numpy array in a fixed orientation with the
geometry to map every voxel to patient coordinates; ``Findings`` is what a pipeline says about
it: a label map aligned voxel for voxel with the input, measurements, scores, and who said so.

Array orientation: ``voxels[k, j, i]`` -- k along the slice normal, j down the rows, i along
the columns of the source images. ``spacing`` is (k, j, i) in mm. The patient position of
voxel (k, j, i) is ``origin + direction @ ([i, j, k] * spacing[::-1])``, i.e. ``direction``'s
columns are the unit vectors of the i (row direction), j (column direction) and k (slice) axes,
in the DICOM patient coordinate system (LPS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Volume:
    """Voxels (float32; HU for CT) with their geometry."""

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str = "CT"
    #: The reconstructed slice thickness the images record (mm; None: not recorded). Slices
    #: may be thicker than their spacing (overlapping reconstruction); quantities that depend
    #: on it (lung densitometry) use the larger of the two (``effective_thickness_mm``).
    slice_thickness_mm: float | None = None

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise ValueError(f"a Volume is 3-D, got an array of shape {self.voxels.shape}")
        if len(self.spacing) != 3 or any(s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be three positive numbers (k, j, i) in mm, got {self.spacing}")
        if np.asarray(self.direction).shape != (3, 3):
            raise ValueError("direction must be a 3x3 matrix whose columns are the i, j, k axes")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.voxels.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_patient(self, kji: np.ndarray) -> np.ndarray:
        """Patient (LPS, mm) coordinates of voxel indices given as (..., 3) arrays of (k, j, i)."""
        kji = np.asarray(kji, dtype=float)
        ijk_mm = kji[..., ::-1] * np.asarray(self.spacing[::-1])
        return np.asarray(self.origin) + ijk_mm @ np.asarray(self.direction).T

    def ras_affine(self) -> np.ndarray:
        """The 4x4 NIfTI-style affine from (i, j, k) voxel indices to RAS millimetres: what a
        NIfTI of ``voxels.transpose(2, 1, 0)`` carries (NIfTI tools, MONAI, nnU-Net use it)."""
        to_lps = np.eye(4)
        to_lps[:3, :3] = np.asarray(self.direction) * np.asarray(self.spacing[::-1])
        to_lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ to_lps

    @property
    def effective_thickness_mm(self) -> float:
        """The thickness each slice's voxels average over: the recorded thickness or the slice
        spacing, whichever is larger."""
        return max(self.slice_thickness_mm or 0.0, float(self.spacing[0]))

    def with_voxels(self, voxels: np.ndarray, spacing: tuple[float, float, float] | None = None) -> Volume:
        """The same geometry (origin, direction) with other voxels, optionally another spacing
        (a resampled volume's slices are as thick as its new spacing, or thicker)."""
        thickness = self.slice_thickness_mm if spacing is None else max(self.effective_thickness_mm, spacing[0])
        return Volume(voxels, spacing or self.spacing, self.origin, self.direction, self.modality, thickness)


@dataclass(frozen=True)
class LabelInfo:
    """One label of a model: its value in the label map, a name and SNOMED CT codes.

    ``category`` and ``type`` are (code value, coding scheme designator, code meaning), as a
    DICOM SEG's Segmented Property Category and Type need them.
    """

    value: int
    name: str
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    color: tuple[int, int, int] = (255, 0, 0)
    lesion: bool = False


@dataclass(frozen=True)
class Measurement:
    """Measurements of one label (all its voxels) or of one lesion (one connected component)."""

    label: int
    name: str
    volume_ml: float
    mean: float
    std: float
    voxel_count: int
    bbox: tuple[tuple[int, int, int], tuple[int, int, int]]  # (k, j, i) min, max inclusive
    centroid_kji: tuple[float, float, float]
    centroid_patient: tuple[float, float, float]
    #: The longest in-plane distance across one connected structure (RECIST-style for a lesion);
    #: None for a row that gathers several structures (both kidneys, all bones, all lesions of a
    #: label together): a distance measured across separate parts describes none of them.
    longest_axial_diameter_mm: float | None
    #: The two voxel (k, j, i) ends of the longest axial diameter, on its slice.
    diameter_endpoints_kji: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    lesion_index: int | None = None  # 1, 2, ... for lesions; None for a whole-label measurement
    score: float | None = None  # the model's probability for this lesion, if it gives one
    #: A voxel (k, j, i) of the structure near its centroid, on a slice that holds it: where a
    #: viewer points at a row without a diameter (the centroid of both kidneys is the spine).
    anchor_kji: tuple[float, float, float] | None = None
    #: "left" or "right": one side of a paired organ (the patient's side, from patient x).
    side: str | None = None
    #: How many connected parts the measured voxels form (26-connectivity).
    parts: int = 1

    @property
    def kind(self) -> str:
        """"lesion" (one connected component of a lesion label), "side" (one side of a paired
        organ) or "label" (every voxel of the label)."""
        return "lesion" if self.lesion_index is not None else "side" if self.side else "label"

    @property
    def display_name(self) -> str:
        """What a reader calls it: "liver lesion 2", "left kidney" (a side is named so when
        measured), "kidneys"."""
        return f"{self.name} {self.lesion_index}" if self.lesion_index is not None else self.name


Code = tuple[str, str, str]
#: A label whose model names no codes: SNOMED CT "Tissue" as category and type (its name kept).
GENERIC_CODE: Code = ("85756007", "SCT", "Tissue")
#: Display colours for labels that come without one (distinct, readable over grey).
LABEL_PALETTE = ((221, 130, 101), (157, 108, 162), (128, 174, 128), (185, 102, 83), (241, 214, 145), (111, 184, 210),
                 (255, 255, 0), (216, 101, 79), (183, 156, 220), (144, 238, 144))


def external_label(value: int, name: str, number: int, codes: dict[str, tuple[Code, Code]],
                   category: Code | None = None, kind: Code | None = None,
                   color: tuple[int, int, int] | None = None) -> LabelInfo:
    """A label of a model we did not make (ONNX/MONAI/nnU-Net/module): its own codes and colour
    where it gives them, else the pipeline's ``codes:`` entry for its name, else GENERIC_CODE;
    ``number`` picks a palette colour."""
    coded = codes.get(name)
    return LabelInfo(value, name, category or (coded[0] if coded else GENERIC_CODE),
                     kind or (coded[1] if coded else GENERIC_CODE), color or LABEL_PALETTE[number % len(LABEL_PALETTE)])


#: uint8 steps of ``Findings.uncertainty`` (0.004 each): finer than any threshold a reader uses.
UNCERTAINTY_STEPS = 250


@dataclass(frozen=True)
class Findings:
    """What a pipeline found in one Volume."""

    label_map: np.ndarray  # uint8, same shape as the input Volume
    labels: tuple[LabelInfo, ...]
    measurements: tuple[Measurement, ...]
    scores: dict[str, float]  # e.g. {"liver lesion present": 0.97}
    findings: dict[str, bool]  # the scores turned into findings by the model card's thresholds
    model_name: str
    model_version: str
    algorithm_family: str = "Artificial Intelligence"
    extra: dict[str, Any] = field(default_factory=dict)
    #: Per voxel, how unsure the model was: 1 - the probability of the class it chose, as
    #: uint8 steps of 1/UNCERTAINTY_STEPS on the label map's grid (None: not asked for, or a
    #: pipeline without probabilities, such as the classical baseline).
    uncertainty: np.ndarray | None = None
    #: SHA-256 of the weights (or rules) that made these findings (ai/digest.py); the worker
    #: fills it from the pipeline's ``weights_digest``.
    weights_digest: str = ""

    def label(self, value: int) -> LabelInfo:
        for info in self.labels:
            if info.value == value:
                return info
        raise KeyError(f"no label {value}")
