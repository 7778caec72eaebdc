"""Post-processing of a label map: per-label connected components, small-island removal,
keeping the largest component of single organs, and hole filling that never overwrites
another label (a lesion inside the liver stays a lesion)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

#: 26-connectivity: voxels touching by a corner belong to the same object.
STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labelled, count = ndimage.label(mask, structure=STRUCTURE)
    return labelled, int(count)


def remove_small(labels: np.ndarray, min_ml: Mapping[int, float], spacing: Sequence[float]) -> np.ndarray:
    """Set components smaller than ``min_ml[label]`` millilitres to background."""
    out = labels.copy()
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for label, ml in min_ml.items():
        labelled, count = components(out == label)
        if count == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(labelled), labelled, index=np.arange(1, count + 1))
        small = np.nonzero(sizes * voxel_ml < ml)[0] + 1
        if len(small):
            out[np.isin(labelled, small)] = 0
    return out


def keep_largest(labels: np.ndarray, which: Iterable[int]) -> np.ndarray:
    """Keep only the largest connected component of each label in ``which``."""
    out = labels.copy()
    for label in which:
        labelled, count = components(out == label)
        if count <= 1:
            continue
        sizes = ndimage.sum_labels(np.ones_like(labelled), labelled, index=np.arange(1, count + 1))
        out[(labelled > 0) & (labelled != int(np.argmax(sizes)) + 1)] = 0
    return out


def fill_holes(labels: np.ndarray, which: Iterable[int]) -> np.ndarray:
    """Fill enclosed background inside each label in ``which`` (other labels untouched)."""
    out = labels.copy()
    for label in which:
        filled = ndimage.binary_fill_holes(out == label)
        out[filled & (out == 0)] = label
    return out


def postprocess(labels: np.ndarray, spacing: Sequence[float], min_component_ml: Mapping[int, float],
                keep_largest_labels: Iterable[int] = (), fill_holes_labels: Iterable[int] = ()) -> np.ndarray:
    out = remove_small(labels, min_component_ml, spacing)
    out = keep_largest(out, keep_largest_labels)
    return fill_holes(out, fill_holes_labels)
