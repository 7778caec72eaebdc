"""The real abdomen CT as a corrected case (monitoring/corrections.py's layout): the source
series as DICOM and TotalSegmentator's lungs, liver, spleen, kidneys and bones as a SEG with
ct-organs' codes, as if a radiologist had corrected the node's segmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ai.registry import ModelRegistry
from ai.types import Findings
from dicom_node.results import ResultSettings, build_segmentation
from dicom_node.storage.volume import load_series

from . import real_scans

#: ct-organs label value -> TotalSegmentator groups (real_scans.REFERENCE_GROUPS).
ORGANS = {1: "lungs", 2: "liver", 3: "spleen", 4: "kidneys", 5: "bone"}


def reference_labels_as_ct_organs() -> np.ndarray:
    reference = real_scans.reference_labels()
    labels = np.zeros(reference.shape, dtype=np.uint8)
    for value, name in ORGANS.items():
        labels[np.isin(reference, real_scans.REFERENCE_GROUPS[name])] = value
    return labels


def reference_case(folder: Path, seed: int = 9) -> Path:
    files = real_scans.write_as_dicom("ct_abdomen_3mm.nii.gz", folder / "source", seed=seed)
    infos = ModelRegistry().get("ct-organs").label_infos()
    findings = Findings(reference_labels_as_ct_organs(), infos, (), {}, {}, "TotalSegmentator reference", "1")
    build_segmentation(load_series(files), findings, f"reference-{seed}", ResultSettings()).save_as(folder / "corrected-seg.dcm")
    return folder
