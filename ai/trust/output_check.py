"""The output check: each structure a model found is reported with its confidence, or withheld
with the reason.

Confidence of a structure: the mean, over its voxels, of the probability the model gave the
class it chose (mean maximum softmax). Plausibility: how many large connected components it may
have (lungs two, a liver one) and which structure it must lie above (lungs above the liver's
centre, along the patient's head-feet axis). A structure that fails either is removed from the
label map (its voxels become background) and named in ``withheld`` with why; a "present"
finding stands only when its own score and its host organ's confidence clear the card's
thresholds (``ClassificationSpec.host_min_confidence``).

Rules come from the card (``output_checks:``), calibrated on held-out in-domain phantoms; the
card says how.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from ..types import LabelInfo, Volume


class StructureRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_confidence: float | None = Field(None, ge=0.0, le=1.0)
    #: Components of at least ``component_ml`` a structure may have.
    max_components: int | None = Field(None, ge=1)
    component_ml: float = Field(5.0, ge=0.0)
    #: The name of a structure whose centre this one's centre must lie above (head-wards of).
    above: str | None = None


@dataclass(frozen=True)
class StructureVerdict:
    name: str
    confidence: float | None
    withheld: str | None  # the reason, or None when reported


def structure_confidence(label_map: np.ndarray, max_probability: np.ndarray, labels: tuple[LabelInfo, ...]) -> dict[int, float]:
    """Mean winning-class probability per label value present in ``label_map`` (same grid)."""
    present = [info.value for info in labels if (label_map == info.value).any()]
    if not present:
        return {}
    means = ndimage.mean(max_probability, labels=label_map, index=present)
    return {value: float(mean) for value, mean in zip(present, np.atleast_1d(means))}


def _superior_coordinate(volume: Volume, label_map: np.ndarray, value: int) -> float | None:
    """The structure's centre along the patient's S axis (LPS z), in mm."""
    where = np.argwhere(label_map == value)
    if where.size == 0:
        return None
    return float(volume.index_to_patient(where.mean(axis=0))[2])


def check_structures(label_map: np.ndarray, volume: Volume, labels: tuple[LabelInfo, ...],
                     confidence: Mapping[int, float], rules: Mapping[str, StructureRule]) -> tuple[np.ndarray, list[StructureVerdict]]:
    """The label map with failing structures removed, and a verdict for each structure found."""
    by_name = {info.name: info for info in labels}
    out = label_map
    verdicts: list[StructureVerdict] = []
    centres = {info.name: _superior_coordinate(volume, label_map, info.value) for info in labels
               if any(rule.above == info.name for rule in rules.values()) or info.name in rules}
    for info in labels:
        if not (label_map == info.value).any():
            continue
        score = confidence.get(info.value)
        rule = rules.get(info.name)
        reason = None
        if rule is not None:
            if rule.min_confidence is not None and score is not None and score < rule.min_confidence:
                reason = f"confidence {score:.2f} under {rule.min_confidence:.2f}"
            elif rule.max_components is not None:
                parts, count = ndimage.label(label_map == info.value)
                if count:
                    sizes = np.bincount(parts.ravel())[1:] * volume.voxel_volume_ml
                    large = int((sizes >= rule.component_ml).sum())
                    if large > rule.max_components:
                        reason = (f"{large} separate parts of at least {rule.component_ml:g} mL, where there are at most "
                                  f"{rule.max_components}")
            if reason is None and rule.above is not None and rule.above in by_name:
                own, other = centres.get(info.name), centres.get(rule.above)
                if own is not None and other is not None and own <= other:
                    reason = f"its centre lies {other - own:.0f} mm below the {rule.above}'s, not above it"
        if reason is not None:
            if out is label_map:
                out = label_map.copy()
            out[out == info.value] = 0
        verdicts.append(StructureVerdict(info.name, score, reason))
    return out, verdicts
