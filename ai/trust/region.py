"""The body region a CT shows, read from its pixels; Body Part Examined is a hint beside them.

Body Part Examined is free text in practice: ``ABD``, ``TORSO``, ``CHEST_ABDOMEN``, Siemens'
``PARTIALBODY``, empty, a local language. ``hint_regions`` maps the common values onto the regions
they name (``SYNONYMS``); a value it does not know is ignored, with a note.

``pixel_regions`` classifies each slice of the gate's sample (about 5 x 3 x 3 mm) by what it
holds, inside the body (> -500 HU, holes filled):
* CHEST: aerated lung (-950 to -500 HU) is at least ``LUNG_FRACTION`` of the body's area;
* HEAD: a narrow body (under ``HEAD_WIDTH_MM``) ringed by bone (> 300 HU on its outline);
* PELVIS: bone of at least ``PELVIS_BONE_CM2`` far from the midline (the iliac wings, the femoral
  heads; ribs in the same place are thin arcs of a few cm2);
* ABDOMEN: a trunk-wide body without lung or pelvic bone (the liver, bowel, kidneys);
A narrow body without a skull (a neck, a child's trunk, a limb) is no region the pixels tell
apart: there Body Part Examined speaks. A region counts when its slices span at least ``MIN_EXTENT_MM``. Only CT in Hounsfield units
is read this way; for other modalities the hint alone speaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

REGIONS = ("HEAD", "NECK", "CHEST", "ABDOMEN", "PELVIS")

#: Body Part Examined values (upper case, spaces, '-' and '_' removed) -> the regions they name.
SYNONYMS: dict[str, frozenset[str]] = {
    **{k: frozenset({"HEAD"}) for k in ("HEAD", "BRAIN", "SKULL", "CRANIUM", "KOPF", "SCHAEDEL", "SCHADEL", "TETE", "CABEZA")},
    **{k: frozenset({"NECK"}) for k in ("NECK", "HALS", "COU", "CUELLO", "CSPINE")},
    **{k: frozenset({"HEAD", "NECK"}) for k in ("HEADNECK", "HEADANDNECK", "KOPFHALS")},
    **{k: frozenset({"CHEST"}) for k in ("CHEST", "THORAX", "LUNG", "LUNGS", "THX", "TORAX", "BRUST", "BRUSTKORB", "POITRINE",
                                         "TSPINE", "HEART")},
    **{k: frozenset({"ABDOMEN"}) for k in ("ABDOMEN", "ABD", "ABDO", "BAUCH", "LIVER", "KIDNEY", "PANCREAS", "LSPINE",
                                           "ABDOMINAL", "UPPERABDOMEN")},
    **{k: frozenset({"PELVIS"}) for k in ("PELVIS", "BECKEN", "BASSIN", "PELVIS", "HIP", "BLADDER", "PROSTATE")},
    **{k: frozenset({"CHEST", "ABDOMEN"}) for k in ("CHESTABDOMEN", "CHESTABD", "THORAXABDOMEN", "THORAXABD", "TORSO",
                                                    "THORACOABDOMINAL")},
    **{k: frozenset({"ABDOMEN", "PELVIS"}) for k in ("ABDOMENPELVIS", "ABDPELVIS", "ABDPEL", "ABDOMENBECKEN")},
    **{k: frozenset({"CHEST", "ABDOMEN", "PELVIS"}) for k in ("CHESTABDPELVIS", "CHESTABDOMENPELVIS", "CAP", "TRUNK",
                                                              "THORAXABDOMENBECKEN")},
    **{k: frozenset(REGIONS) for k in ("WHOLEBODY", "WB", "BODY", "GANZKOERPER", "GANZKORPER")},
}
#: Values that say nothing about the region (Siemens' PARTIALBODY, "other"): ignored quietly.
NAMES_NOTHING = frozenset({"", "PARTIALBODY", "OTHER", "UNKNOWN", "NONE", "SERVICE", "PHANTOM"})

LUNG_FRACTION = 0.15
HEAD_WIDTH_MM = 200.0
PELVIS_BONE_CM2 = 12.0
MIN_EXTENT_MM = 20.0


def _key(value: str) -> str:
    return "".join(ch for ch in value.upper() if ch.isalnum())


def hint_regions(body_part: str | None) -> tuple[frozenset[str] | None, str | None]:
    """(the regions Body Part Examined names, or None; a note when the value is unknown)."""
    key = _key(body_part or "")
    if key in NAMES_NOTHING:
        return None, None
    if key in SYNONYMS:
        return SYNONYMS[key], None
    return None, f"Body Part Examined {body_part!r} is not a value the node knows; ignored (the pixels decide)"


def canonical(values: list[str]) -> frozenset[str]:
    """A domain's ``body_regions`` (Body Part Examined values) as regions."""
    found: set[str] = set()
    for value in values:
        found |= SYNONYMS.get(_key(value), frozenset({_key(value)}))
    return frozenset(found)


@dataclass(frozen=True)
class PixelRegions:
    regions: frozenset[str]
    #: mm of the scan's extent each region's slices span.
    extent_mm: dict[str, float]


def _slice_region(plane: np.ndarray, spacing: tuple[float, float]) -> str | None:
    body = ndimage.binary_fill_holes(plane > -500)
    area = int(body.sum())
    if area * spacing[0] * spacing[1] < 2500:  # under 25 cm2: no body here (a table, an arm)
        return None
    columns = np.flatnonzero(body.any(axis=0))
    width = (columns[-1] - columns[0] + 1) * spacing[1]
    lung = body & (plane > -950) & (plane < -500)
    if lung.sum() >= LUNG_FRACTION * area:
        return "CHEST"
    if width < HEAD_WIDTH_MM:
        outline = body & ~ndimage.binary_erosion(body, iterations=3)
        # A narrow body without a skull: a neck, a child's trunk or a limb; the pixels do not say.
        return "HEAD" if (plane[outline] > 300).mean() > 0.3 else None
    midline = (columns[0] + columns[-1]) / 2
    lateral = np.abs(np.arange(plane.shape[1]) - midline) * spacing[1] > 0.2 * width
    bone_cm2 = float((body & (plane > 200) & lateral[None, :]).sum()) * spacing[0] * spacing[1] / 100
    return "PELVIS" if bone_cm2 >= PELVIS_BONE_CM2 else "ABDOMEN"


def pixel_regions(sample: np.ndarray, spacing: tuple[float, float, float]) -> PixelRegions:
    """The regions the slices of a CT sample (HU; ``spacing`` its k, j, i mm) show."""
    extent: dict[str, float] = {}
    for plane in sample:
        region = _slice_region(plane, (spacing[1], spacing[2]))
        if region is not None:
            extent[region] = extent.get(region, 0.0) + spacing[0]
    return PixelRegions(frozenset(r for r, mm in extent.items() if mm >= MIN_EXTENT_MM), extent)
