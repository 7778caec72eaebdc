"""Measurements of labels and lesions: volume (mL), mean and standard deviation of intensity,
bounding box, centroid (voxel and patient), and the longest axial diameter with its two ends
(the line a viewer draws on the lesion's key slice)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .postprocess import components
from .types import LabelInfo, Measurement, Volume


def longest_axial_diameter(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[float, tuple[tuple[float, float, float], tuple[float, float, float]] | None]:
    """The longest in-plane (one k slice) distance in mm between two voxel centres of ``mask``,
    and its end points as (k, j, i). Computed on the convex hull of each slice's voxels."""
    best = 0.0
    ends = None
    scale = np.asarray(spacing[1:], dtype=float)
    for k in np.nonzero(mask.any(axis=(1, 2)))[0]:
        plane = mask[k]
        # The convex hull only needs the outline of the slice's object, not its inside.
        points = np.argwhere(plane & ~ndimage.binary_erosion(plane)).astype(float)
        if len(points) < 2:
            continue
        if len(points) > 3:
            try:
                points = points[ConvexHull(points * scale).vertices]
            except QhullError:
                pass  # collinear points: keep them all
        mm = points * scale
        distances = np.sqrt(((mm[:, None, :] - mm[None, :, :]) ** 2).sum(-1))
        a, b = np.unravel_index(int(np.argmax(distances)), distances.shape)
        if distances[a, b] > best:
            best = float(distances[a, b])
            ends = ((float(k), *map(float, points[a])), (float(k), *map(float, points[b])))
    return best, ends  # type: ignore[return-value]


def _bbox(mask: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    lo, hi = [], []
    for axis in range(3):
        present = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        lo.append(int(present[0]))
        hi.append(int(present[-1]))
    return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


def measure(mask: np.ndarray, volume: Volume, label: LabelInfo, lesion_index: int | None = None,
            score: float | None = None, offset: tuple[int, int, int] = (0, 0, 0)) -> Measurement:
    """Measure one object. ``mask`` may be a sub-box of the volume starting at ``offset``
    (k, j, i). Works inside the object's bounding box and never lists all its voxels, so a
    whole-organ mask on a 512 x 512 x 300 grid costs little memory."""
    (k0, j0, i0), (k1, j1, i1) = _bbox(mask)
    box = (slice(k0, k1 + 1), slice(j0, j1 + 1), slice(i0, i1 + 1))
    local = mask[box]
    k0, j0, i0 = k0 + offset[0], j0 + offset[1], i0 + offset[2]
    k1, j1, i1 = k1 + offset[0], j1 + offset[1], i1 + offset[2]
    values = volume.voxels[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1][local]
    count = int(local.sum())
    mean = float(values.mean(dtype=np.float64))
    std = float(np.sqrt(max(0.0, float(np.einsum("i,i->", values, values, dtype=np.float64)) / count - mean * mean)))
    del values
    # From the mask's projections: scipy's center_of_mass builds a float64 array of the whole box.
    centroid = np.asarray([
        float(np.dot(local.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64), np.arange(local.shape[axis])))
        / count for axis in range(3)
    ]) + np.asarray([k0, j0, i0])
    diameter, ends = longest_axial_diameter(local, volume.spacing)
    if ends is not None:
        ends = tuple((e[0] + k0, e[1] + j0, e[2] + i0) for e in ends)  # type: ignore[assignment]
    return Measurement(
        label=label.value,
        name=label.name,
        volume_ml=float(count * volume.voxel_volume_ml),
        mean=mean,
        std=std,
        voxel_count=count,
        bbox=((k0, j0, i0), (k1, j1, i1)),
        centroid_kji=tuple(float(x) for x in centroid),  # type: ignore[arg-type]
        centroid_patient=tuple(float(x) for x in volume.index_to_patient(centroid)),  # type: ignore[arg-type]
        longest_axial_diameter_mm=diameter,
        diameter_endpoints_kji=ends,
        lesion_index=lesion_index,
        score=score,
    )


#: A lesion's score from its label value and its voxel (k, j, i) indices.
LesionScore = Callable[[int, np.ndarray], float]


def probability_score(probabilities: dict[int, np.ndarray], shape: tuple[int, int, int]) -> LesionScore:
    """Mean probability of a component, read from class probability maps on a coarser grid over
    the same extent (each voxel of ``shape`` maps to the coarse voxel containing its centre),
    so full-resolution probability maps never need to exist."""

    def score(label: int, indices: np.ndarray) -> float:
        grid = probabilities[label]
        factors = np.asarray(grid.shape) / np.asarray(shape)
        coarse = np.minimum(((indices + 0.5) * factors).astype(int), np.asarray(grid.shape) - 1)
        return float(grid[coarse[:, 0], coarse[:, 1], coarse[:, 2]].mean())

    return score


def measure_all(label_map: np.ndarray, volume: Volume, labels: tuple[LabelInfo, ...],
                lesion_score: LesionScore | None = None) -> list[Measurement]:
    """One measurement per present label, then one per lesion (connected component of a lesion
    label), with its score: ``lesion_score(label, voxel_indices)``, e.g. the model's mean
    probability over the component (see probability_score).

    Each label is handled inside its own bounding box (one pass of ``find_objects`` finds them
    all), so no full-size mask or component map is ever made: on a 512 x 512 x 300 CT that
    would be 75 MB per mask and 300 MB per component map."""
    boxes = ndimage.find_objects(label_map)
    results = []
    lesion_boxes = []
    for info in labels:
        box = boxes[info.value - 1] if 0 < info.value <= len(boxes) else None
        if box is None:
            continue
        offset = (box[0].start, box[1].start, box[2].start)
        results.append(measure(label_map[box] == info.value, volume, info, offset=offset))
        if info.lesion:
            lesion_boxes.append((info, box, offset))
    for info, box, offset in lesion_boxes:
        labelled, count = components(label_map[box] == info.value)
        for n, sub in enumerate(ndimage.find_objects(labelled), start=1):
            if sub is None:
                continue
            local = labelled[sub] == n
            corner = tuple(o + s.start for o, s in zip(offset, sub))
            score = None
            if lesion_score is not None:
                score = float(lesion_score(info.value, np.argwhere(local) + np.asarray(corner)))
            results.append(measure(local, volume, info, lesion_index=n, score=score, offset=corner))  # type: ignore[arg-type]
    return results
