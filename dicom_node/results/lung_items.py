"""The lung densitometry of a finding (``ai.lung_density``) as TID 1500 content: NUM items for
the lungs' measurement groups and TEXT items that say under which conditions the numbers hold.

Codes: mean lung density is DICOM's Mean Attenuation Coefficient (DCM 112181, CID 6141); lung
volume is SNOMED CT Volume in the groups already (with Finding Site Lung and its laterality).
PS3.16 has no concept for the share of a region below an attenuation threshold nor for an
attenuation percentile other than 5th/10th/90th/95th (CIDs 6141, 7464, 7465, 218 and 226 were
checked): LAA%-950 and Perc15 carry the node's own codes, with the definition in their meaning
and in the README.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset

from ai.types import Findings

from .units import HOUNSFIELD, PERCENT

MEAN_LUNG_DENSITY = hd.sr.CodedConcept("112181", "DCM", "Mean Attenuation Coefficient")
LAA950 = hd.sr.CodedConcept("LAA950", "99DCMNODE", "Percent of lung below -950 HU (LAA%-950)")
PERC15 = hd.sr.CodedConcept("PERC15", "99DCMNODE", "15th percentile of lung attenuation (Perc15)")
SLICE_THICKNESS = hd.sr.CodedConcept("112225", "DCM", "Slice Thickness")
RECONSTRUCTION_ALGORITHM = hd.sr.CodedConcept("113961", "DCM", "Reconstruction Algorithm")


def density_of(findings: Findings) -> dict[str, Any]:
    return findings.extra.get("lung_density") or {}


def lung_measurements(findings: Findings, side: str | None) -> list[hd.sr.Measurement]:
    """MLD, LAA%-950 and Perc15 of both lungs (``side`` None) or of one, where reported."""
    row = next((r for r in density_of(findings).get("rows", []) if r.get("side") == side), None)
    if row is None:
        return []
    items = [hd.sr.Measurement(name=MEAN_LUNG_DENSITY, value=row["mld_hu"], unit=HOUNSFIELD)]
    if row.get("laa950_percent") is not None:
        items.append(hd.sr.Measurement(name=LAA950, value=row["laa950_percent"], unit=PERCENT))
    if row.get("perc15_hu") is not None:
        items.append(hd.sr.Measurement(name=PERC15, value=row["perc15_hu"], unit=HOUNSFIELD))
    return items


def lung_conditions(findings: Findings, source: Dataset) -> list[hd.sr.TextContentItem]:
    """The slice thickness the numbers were made on and the reconstruction kernel (both change
    LAA%-950 and Perc15), when there are numbers."""
    density = density_of(findings)
    if not density.get("rows"):
        return []
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items = [hd.sr.TextContentItem(name=SLICE_THICKNESS, value=f"lung densitometry on {density['slice_thickness_mm']:g} mm slices",
                                   relationship_type=contains)]
    kernel = source.get("ConvolutionKernel")
    if kernel:
        text = "\\".join(kernel) if not isinstance(kernel, str) else kernel
        items.append(hd.sr.TextContentItem(name=RECONSTRUCTION_ALGORITHM, value=f"convolution kernel {text}"[:1024],
                                           relationship_type=contains))
    return items


def lung_withheld(findings: Findings) -> dict[str, str]:
    """Why lung numbers were withheld, as the report's "withheld" entries."""
    return {"lung densitometry": "; ".join(density_of(findings).get("withheld", []))} if density_of(findings).get("withheld") else {}
