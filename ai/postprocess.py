"""Post-processing of a label map: per-label connected components, small-island removal,
keeping the largest component of single organs, lesions kept only inside their host organ,
and hole filling that never overwrites another label (a lesion inside the liver stays a
lesion)."""

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


def require_host(labels: np.ndarray, hosts: Mapping[int, tuple[int, float]]) -> np.ndarray:
    """Drop each component of a label in ``hosts`` whose one-voxel border is less than
    ``min_fraction`` its host label (or the label itself): a liver lesion lies in the liver.

    A lesion model's typical false positive is the blurred edge of its host organ, whose
    intensity passes for a hypodense lesion: such a component sits half outside the organ.
    """
    out = labels.copy()
    for label, (host, min_fraction) in hosts.items():
        labelled, count = components(out == label)
        for index, box in enumerate(ndimage.find_objects(labelled), start=1):
            if box is None:
                continue
            grown = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)
            piece = labelled[grown] == index
            border = ndimage.binary_dilation(piece, structure=STRUCTURE) & ~piece
            around = out[grown][border]
            if around.size and np.isin(around, (host, label)).mean() < min_fraction:
                out[grown][piece] = 0
    return out


def postprocess(labels: np.ndarray, spacing: Sequence[float], min_component_ml: Mapping[int, float],
                keep_largest_labels: Iterable[int] = (), fill_holes_labels: Iterable[int] = (),
                hosts: Mapping[int, tuple[int, float]] | None = None) -> np.ndarray:
    out = remove_small(labels, min_component_ml, spacing)
    out = keep_largest(out, keep_largest_labels)
    if hosts:
        out = require_host(out, hosts)
    return fill_holes(out, fill_holes_labels)
