"""Quantitative lung CT from a lung mask: lung volume per side, mean lung density, the emphysema
index LAA%-950 and the 15th percentile density, each by its published definition.

* lung volume (mL): the mask's voxels times the voxel volume; left and right split at the body's
  midline (``measure.midline_x``), the patient's left being +x (LPS);
* MLD, mean lung density (HU): the mean attenuation over the mask;
* LAA%-950 (%): the percent of the mask's voxels below -950 HU (the "density mask" of Mueller et
  al., Chest 1988; -950 HU validated against pathology on 1 mm sections, Gevenois et al., AJRCCM
  1996);
* Perc15 (HU): the 15th percentile of the mask's attenuation histogram (Dirksen et al., AJRCCM
  1999; Parr et al., AJRCCM 2004): the HU below which 15 % of the lung lies.

When the numbers are withheld (``LungDensity.withheld`` says why):
* all of them, when the mask is not a plausible pair of whole lungs: it reaches the first or the
  last slice (the scan cut the lungs off: a volume or index of part of a lung is not the
  patient's), or a side holds less than ``MIN_SIDE_ML`` (not a lung: a pneumonectomy, or a gas
  pocket taken for lung), or there is no lung at all;
* LAA%-950 and Perc15, when the slices average over more than ``MAX_TAIL_SLICE_MM``: both read the
  histogram's low tail, which averaging over thick slices shrinks (the same lungs at 5 mm read a
  fraction of their 1 mm LAA%-950). Volume and MLD are reported at any thickness the gate admits
  (averaging keeps a mean).
The reconstruction kernel changes LAA%-950 too (a sharp kernel's noise adds voxels below -950):
the DICOM side notes it beside the numbers; this module never sees DICOM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .measure import left_of_midline, midline_x
from .types import Volume

#: The emphysema threshold of LAA%-950 (HU) and the percentile of Perc15.
LAA_THRESHOLD_HU = -950.0
PERCENTILE = 15.0
#: Thicker slices than this and LAA%-950 and Perc15 are withheld (Fleischner Society and QIBA
#: guidance for quantitative emphysema: thin sections, at most 1.5 mm).
MAX_TAIL_SLICE_MM = 1.5
#: A side with less lung than this is not a lung the numbers may describe.
MIN_SIDE_ML = 100.0


@dataclass(frozen=True)
class LungRow:
    """The numbers of one region: "lungs" (both together), "left lung" or "right lung"."""

    region: str
    side: str | None
    volume_ml: float
    mld_hu: float
    laa950_percent: float | None
    perc15_hu: float | None
    voxel_count: int


@dataclass(frozen=True)
class LungDensity:
    rows: tuple[LungRow, ...]
    #: The thickness the voxels average over (mm): the larger of recorded thickness and spacing.
    slice_thickness_mm: float
    #: Why numbers were withheld: all of them (``rows`` empty) or the low-tail ones.
    withheld: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly, rounded as reported (the job summary and the dashboard carry this)."""
        rows = []
        for row in self.rows:
            values = asdict(row)
            for key, digits in (("volume_ml", 1), ("mld_hu", 1), ("laa950_percent", 2), ("perc15_hu", 1)):
                if values[key] is not None:
                    values[key] = round(float(values[key]), digits)
            rows.append(values)
        return {"rows": rows, "slice_thickness_mm": round(self.slice_thickness_mm, 2), "withheld": list(self.withheld)}


def _row(region: str, side: str | None, values: np.ndarray, voxel_ml: float, tails: bool) -> LungRow:
    return LungRow(
        region=region, side=side, volume_ml=float(values.size) * voxel_ml, mld_hu=float(values.mean(dtype=np.float64)),
        laa950_percent=float((values < LAA_THRESHOLD_HU).mean() * 100.0) if tails else None,
        perc15_hu=float(np.percentile(values, PERCENTILE)) if tails else None,
        voxel_count=int(values.size),
    )


def lung_density(volume: Volume, lungs: np.ndarray, midline: float | None = None) -> LungDensity:
    """The numbers of ``lungs`` (a boolean mask on ``volume``'s grid, in HU), or why not;
    ``midline``: the body's (measure.midline_x), when the caller has it already."""
    thickness = volume.effective_thickness_mm
    if not lungs.any():
        return LungDensity((), thickness, ("no lungs found",))
    present = np.flatnonzero(lungs.any(axis=(1, 2)))
    if present[0] == 0 or present[-1] == lungs.shape[0] - 1:
        edge = "first" if present[0] == 0 else "last"
        return LungDensity((), thickness, (f"the lungs reach the scan's {edge} slice: the scan cut them off, and whole-lung "
                                           "volumes and indices need the whole lung",))
    box = (slice(int(present[0]), int(present[-1]) + 1), slice(0, lungs.shape[1]), slice(0, lungs.shape[2]))
    local = lungs[box]
    left = left_of_midline(volume, box, midline_x(volume) if midline is None else midline) & local
    right = local & ~left
    voxel_ml = volume.voxel_volume_ml
    small = [f"the {side} lung holds {int(mask.sum()) * voxel_ml:.0f} mL, less than {MIN_SIDE_ML:.0f} mL (not a whole lung)"
             for side, mask in (("left", left), ("right", right)) if int(mask.sum()) * voxel_ml < MIN_SIDE_ML]
    if small:
        return LungDensity((), thickness, tuple(small))
    tails = thickness <= MAX_TAIL_SLICE_MM
    withheld = () if tails else (f"LAA%-950 and Perc15: slices {thickness:g} mm thick, the method allows at most "
                                 f"{MAX_TAIL_SLICE_MM:g} mm (thick slices shrink the histogram's low tail)",)
    hu = volume.voxels[box]
    rows = (_row("lungs", None, hu[local], voxel_ml, tails), _row("right lung", "right", hu[right], voxel_ml, tails),
            _row("left lung", "left", hu[left], voxel_ml, tails))
    return LungDensity(rows, thickness, withheld)
