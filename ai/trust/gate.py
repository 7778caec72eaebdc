"""The input gate: a series is held against a model's domain before the model runs.

Evidence comes from the series' attributes (``GateFacts``, read by the DICOM side) and from its
pixels, and no decision rests on one attribute alone: a Modality of CT must be borne out by
Hounsfield units (air near -1000, fat near -100); a slice thickness is the larger of the
attribute and the slice spacing; the body region is read from the pixels (region.py), Body
Part Examined only a hint beside them, and the body's width is measured always; contrast is what the Contrast/Bolus module records, a note
that only adds to other reasons. A learned model's domain also records the intensity and
texture statistics of its training data, and a scan whose statistics lie too far from them is
out of the model's domain, whatever its attributes say.

``check`` returns a ``GateDecision``: applicable or not, with every reason; it never raises on
odd input (an empty volume is a reason, not an exception).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..types import Volume
from .domain import Domain
from .features import feature_distance, intensity_features
from .features import sample as features_sample
from .region import canonical, hint_regions, pixel_regions


@dataclass(frozen=True)
class GateFacts:
    """What the series' DICOM attributes say (the DICOM side reads them; ``None``: absent)."""

    modality: str
    body_part_examined: str | None = None
    slice_thickness_mm: float | None = None
    contrast_agent: str | None = None  # ContrastBolusAgent (the module is present only if contrast was used)
    image_type: tuple[str, ...] = ()
    has_rescale: bool = True  # RescaleSlope and RescaleIntercept present
    manufacturer: str | None = None


@dataclass(frozen=True)
class GateDecision:
    applicable: bool
    reasons: tuple[str, ...]  # why not (empty when applicable)
    notes: tuple[str, ...] = ()  # what was noticed but decides nothing alone
    measures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "in domain"


CONTRAST_PHASES_NEEDING_AGENT = {"arterial", "portal-venous", "delayed"}


def _body_width_mm(hu: np.ndarray, spacing_i: float) -> float:
    """Median over slices of the widest extent of tissue (> -500 HU) along the image rows."""
    widths = []
    for plane in hu:
        columns = np.flatnonzero((plane > -500).any(axis=0))
        if columns.size:
            widths.append((columns[-1] - columns[0] + 1) * spacing_i)
    return float(np.median(widths)) if widths else 0.0


def _fat_mode(hu: np.ndarray) -> tuple[float | None, float]:
    """(the histogram mode between -200 and -30 HU, the fraction of tissue there)."""
    tissue = hu[hu > -500]
    if tissue.size == 0:
        return None, 0.0
    fat = tissue[(tissue > -200) & (tissue < -30)]
    fraction = fat.size / tissue.size
    if fat.size < 50:
        return None, fraction
    counts, edges = np.histogram(fat, bins=34, range=(-200, -30))
    smooth = ndimage.uniform_filter1d(counts.astype(float), 3)
    peak = int(np.argmax(smooth))
    return float((edges[peak] + edges[peak + 1]) / 2), fraction


def _region(domain: Domain, facts: GateFacts, sample: np.ndarray, spacing: tuple[float, float, float],
            notes: list[str], measures: dict[str, Any]) -> str | None:
    """Why the body region is not the model's (None: it is, or cannot be told). The pixels
    decide (region.py); Body Part Examined speaks only where the pixels say nothing (not CT, a
    sliver of a scan), and a contradiction between the two is noted."""
    hint, unknown = hint_regions(facts.body_part_examined)
    if unknown:
        notes.append(unknown)
    seen = pixel_regions(sample, spacing).regions if facts.modality.upper() == "CT" else frozenset()
    measures["regions"] = sorted(seen)
    if hint and seen and not hint & seen:
        notes.append(f"Body Part Examined {facts.body_part_examined} names {', '.join(sorted(hint))}, the pixels show "
                     f"{', '.join(sorted(seen))}: the pixels decide")
    if not domain.body_regions:
        return None
    allowed = canonical(domain.body_regions)
    shown, source = (seen, "the pixels show") if seen else (hint, f"Body Part Examined {facts.body_part_examined} names")
    if not shown:
        notes.append("body region not determined (no region in the pixels, no usable Body Part Examined)")
        return None
    if not shown & allowed:
        return f"{source} {', '.join(sorted(shown))}, not {', '.join(sorted(allowed))}"
    return None


def check(domain: Domain, facts: GateFacts, volume: Volume) -> GateDecision:
    """Hold one series against ``domain``."""
    started = time.perf_counter()
    reasons: list[str] = []
    notes: list[str] = []
    measures: dict[str, Any] = {}
    modality = (facts.modality or "").upper()
    if modality not in [m.upper() for m in domain.modality]:
        reasons.append(f"Modality {modality or '(none)'} is not {'/'.join(domain.modality)}")
    if volume.voxels.size == 0:
        return GateDecision(False, (*reasons, "the series holds no voxels"), seconds=time.perf_counter() - started)
    sample, sample_spacing = features_sample(volume)
    if "CT" in [m.upper() for m in domain.modality]:
        darkest = float(np.percentile(sample, 0.5))
        measures["air_hu"] = round(darkest, 1)
        low, high = domain.air_hu
        if not low <= darkest <= high:
            reasons.append(f"the pixels are not Hounsfield units: the darkest voxels read {darkest:.0f} where air reads "
                           f"{low:.0f} to {high:.0f}" + ("" if facts.has_rescale else " (no Rescale Slope/Intercept)"))
        elif not facts.has_rescale:
            notes.append("no Rescale Slope/Intercept, but the pixels read as Hounsfield units")
        fat, fraction = _fat_mode(sample)
        measures["fat_hu"] = None if fat is None else round(fat, 1)
        if fat is not None and fraction > 0.02 and not domain.fat_hu[0] <= fat <= domain.fat_hu[1]:
            reasons.append(f"fat reads {fat:.0f} HU where it reads {domain.fat_hu[0]:.0f} to {domain.fat_hu[1]:.0f} "
                           "(not Hounsfield units, or not CT)")
    thickness = max(facts.slice_thickness_mm or 0.0, float(volume.spacing[0]))
    measures["slice_thickness_mm"] = round(thickness, 2)
    low, high = domain.slice_thickness_mm
    if not low <= thickness <= high:
        reasons.append(f"slices {thickness:g} mm thick (thickness or spacing), outside {low:g}-{high:g} mm")
    pixel = float(max(volume.spacing[1], volume.spacing[2]))
    measures["pixel_spacing_mm"] = round(pixel, 3)
    low, high = domain.pixel_spacing_mm
    if not low <= pixel <= high:
        reasons.append(f"pixels {pixel:g} mm apart, outside {low:g}-{high:g} mm")
    region_reason = _region(domain, facts, sample, sample_spacing, notes, measures)
    if region_reason:
        reasons.append(region_reason)
    width = _body_width_mm(sample, float(sample_spacing[2]))
    measures["body_width_mm"] = round(width, 1)
    low, high = domain.body_width_mm
    if not low <= width <= high:
        reasons.append(f"the body is {width:.0f} mm wide, outside {low:.0f}-{high:.0f} mm (not the region this model "
                       "was made for)")
    phases = set(domain.contrast_phases)
    if "any" not in phases:
        given = facts.contrast_agent is not None and facts.contrast_agent.strip() != ""
        if phases <= CONTRAST_PHASES_NEEDING_AGENT and not given:
            notes.append(f"no contrast agent recorded, where the model expects {', '.join(sorted(phases))}")
        if phases == {"non-contrast"} and given:
            notes.append(f"contrast recorded ({facts.contrast_agent}), where the model expects none")
    if domain.intensity is not None:
        features = intensity_features(volume)
        distance, worst = feature_distance(features, domain.intensity.features)
        measures["features"] = {k: round(v, 4) for k, v in features.items()}
        measures["distance"] = round(distance, 2)
        if distance > domain.intensity.max_distance:
            mean = domain.intensity.features[worst][0]
            reasons.append(f"intensity and texture unlike the training data ({domain.trained_on.kind} "
                           f"{domain.trained_on.count}): {worst} {features.get(worst, float('nan')):.3g} against "
                           f"{mean:.3g} there, {distance:.1f} spreads away (at most {domain.intensity.max_distance:g})")
    if reasons:
        reasons.extend(notes)
    return GateDecision(not reasons, tuple(reasons), tuple(notes), measures, time.perf_counter() - started)
