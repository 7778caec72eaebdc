"""A model's declared domain: the inputs it was made for, from its card's ``domain:`` section.

The gate (``gate.py``) holds every series against it before the model runs. What the card
says about its training data (synthetic or patient data, how many) travels with the results.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainingData(_Strict):
    kind: Literal["synthetic", "patient", "none"]
    count: int = Field(0, ge=0)
    description: str = ""


class IntensityReference(_Strict):
    """Statistics of the training data (``features.intensity_features``) and how far a scan may
    lie from them: the largest per-feature standardised distance (``max_distance``)."""

    features: dict[str, tuple[float, float]]  # name -> (mean, std)
    max_distance: float = Field(gt=0)
    #: Where the statistics and the threshold come from (data, script, held-out check).
    provenance: str = ""


class Domain(_Strict):
    """What a model may be run on. Ranges are inclusive; an empty ``body_regions`` accepts any
    region; ``intensity`` None: no statistics (a rule-based pipeline is judged by the rest)."""

    modality: list[str] = Field(min_length=1)
    body_regions: list[str] = Field(default_factory=list)  # BodyPartExamined values
    contrast_phases: list[Literal["non-contrast", "arterial", "portal-venous", "delayed", "any"]] = Field(
        default_factory=lambda: ["any"])
    slice_thickness_mm: tuple[float, float] = (0.5, 5.0)
    pixel_spacing_mm: tuple[float, float] = (0.3, 3.0)
    #: The body's median width in the axial plane: a torso is 250-450 mm, a head 140-200.
    body_width_mm: tuple[float, float] = (220.0, 600.0)
    #: Where air must read (HU): the darkest percentile of the scan.
    air_hu: tuple[float, float] = (-1100.0, -900.0)
    #: Where fat must read (HU), when the scan holds fat: the mode between -200 and -30 HU.
    fat_hu: tuple[float, float] = (-140.0, -60.0)
    intensity: IntensityReference | None = None
    trained_on: TrainingData = TrainingData(kind="none")

    @model_validator(mode="after")
    def _ranges(self) -> Domain:
        for name in ("slice_thickness_mm", "pixel_spacing_mm", "body_width_mm", "air_hu", "fat_hu"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: the lower bound {low} is above the upper bound {high}")
        return self
