"""Corrected cases (kept by corrections.py under ``monitoring.cases_path``) as training cases
for a model: the source series as a volume and the corrected SEG's segments mapped onto the
model's label values by their segmented property type (SNOMED CT code), then by label name.

Where the correction names every structure of the model (lesions aside), an unlabelled voxel is
background; where it names only some, an unlabelled voxel may be one it left out, so it is
IGNORE (no loss is taken there): a radiologist who corrected the lungs did not say the liver
was absent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom

from ai.finetune import LabelledCase
from ai.training import IGNORE

from ..storage.volume import load_series
from .corrections import SEG_CLASS

log = logging.getLogger(__name__)


def _case_files(folder: Path) -> tuple[list[Path], Path | None]:
    """(source series files, the corrected SEG), as corrections.py or a de-identified export laid them out."""
    source, seg = [], None
    for path in sorted(folder.rglob("*.dcm")):
        sop_class = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).get("SOPClassUID", ""))
        if sop_class == SEG_CLASS:
            seg = path
        else:
            source.append(path)
    return source, seg


def load_case(folder: Path, labels: list[Any]) -> LabelledCase | None:
    """One case folder for a model whose card has ``labels`` (LabelSpec); None when the SEG
    names none of the model's structures."""
    files, seg_path = _case_files(folder)
    if seg_path is None or not files:
        return None
    source = load_series(files)
    seg = hd.seg.segread(seg_path)
    uids = [frame.sop_instance_uid for frame in source.frames]
    by_code = {label.type[0]: label for label in labels}
    by_name = {label.name.lower(): label for label in labels}
    out = np.zeros(source.volume.shape, dtype=np.uint8)
    named: set[int] = set()
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        label = by_code.get(str(description.segmented_property_type.value)) or by_name.get(str(description.segment_label).lower())
        if label is None:
            continue
        mask = seg.get_pixels_by_source_instance(uids, segment_numbers=[number], ignore_spatial_locations=True,
                                                 assert_missing_frames_are_empty=True, dtype=np.uint8)[..., 0] > 0
        out[mask] = label.value
        named.add(label.value)
    if not named:
        return None
    organs = {label.value for label in labels if not label.lesion}
    if not organs <= named:
        out[out == 0] = IGNORE
    return LabelledCase(folder.name, source.volume, out)


def corrected_cases(index: Any, labels: list[Any], model: str | None = None) -> list[LabelledCase]:
    """Every recorded correction's case (of ``model``'s results, or all) that names one of ``labels``."""
    sql = "SELECT case_path, model FROM corrections ORDER BY id"
    cases = []
    for row in index.query(sql):
        if model and row["model"] and row["model"] != model:
            continue
        folder = Path(row["case_path"])
        if not folder.is_dir():
            log.warning("Corrected case %s is gone; skipped", folder)
            continue
        case = load_case(folder, labels)
        if case is not None:
            cases.append(case)
    return cases
