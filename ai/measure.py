"""Measurements of labels, sides of paired organs and lesions: volume (mL), mean and standard
deviation of intensity, bounding box, centroid (voxel and patient), and the longest axial
diameter with its two ends (the line a viewer draws on the key slice).

A diameter belongs to one connected structure, as a radiologist measures it: each lesion (its
connected component, RECIST's longest axial diameter), each side of a paired organ (left and
right kidney, left and right lung), a single organ that is one piece. A row that gathers several
structures (both kidneys, all bones, all lesions of a label) carries volume, mean and SD only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .postprocess import STRUCTURE, components
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


def count_parts(mask: np.ndarray) -> int:
    """Connected components of ``mask`` (26-connectivity), labelled into uint16 (half the
    memory of scipy's int32 on a whole-body mask; int32 only when there are more parts)."""
    try:
        return int(ndimage.label(mask, structure=STRUCTURE, output=np.uint16)[1])
    except RuntimeError:
        return components(mask)[1]


def _anchor(mask: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """The voxel of ``mask`` nearest ``centroid`` in-plane on the centroid's slice, or on the
    slice holding the most voxels when the centroid's slice holds none (a horseshoe)."""
    k = int(np.clip(round(float(centroid[0])), 0, mask.shape[0] - 1))
    if not mask[k].any():
        k = int(np.argmax(mask.sum(axis=(1, 2))))
    points = np.argwhere(mask[k])
    nearest = points[int(np.argmin(((points - centroid[1:]) ** 2).sum(axis=1)))]
    return np.asarray([k, *nearest], dtype=float)


def _bbox(mask: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    lo, hi = [], []
    for axis in range(3):
        present = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        lo.append(int(present[0]))
        hi.append(int(present[-1]))
    return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


def measure(mask: np.ndarray, volume: Volume, label: LabelInfo, lesion_index: int | None = None,
            score: float | None = None, offset: tuple[int, int, int] = (0, 0, 0), parts: int | None = None,
            side: str | None = None) -> Measurement:
    """Measure one object. ``mask`` may be a sub-box of the volume starting at ``offset``
    (k, j, i). Works inside the object's bounding box and never lists all its voxels, so a
    whole-organ mask on a 512 x 512 x 300 grid costs little memory. ``parts``: its connected
    components (counted here when not given); the diameter is measured only when it is one."""
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
    if parts is None:
        parts = count_parts(local)
    diameter, ends = longest_axial_diameter(local, volume.spacing) if parts == 1 else (None, None)
    anchor = _anchor(local, centroid - np.asarray([k0, j0, i0])) + np.asarray([k0, j0, i0])
    if ends is not None:
        ends = tuple((e[0] + k0, e[1] + j0, e[2] + i0) for e in ends)  # type: ignore[assignment]
    return Measurement(
        label=label.value,
        name=f"{side} {label.type[2].lower()}" if side else label.name,
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
        anchor_kji=tuple(float(x) for x in anchor),  # type: ignore[arg-type]
        side=side,
        parts=parts,
    )


#: SNOMED CT types of organs that come in pairs: measured per side as well as together.
PAIRED_TYPES = {"39607008": "Lung", "64033007": "Kidney", "23451007": "Adrenal gland", "15497006": "Ovary",
                "40689003": "Testis", "81745001": "Eye", "76752008": "Breast", "53505006": "Ureter"}


def is_paired(label: LabelInfo) -> bool:
    """A label of one organ type that comes in pairs (its type code says so), not a lesion."""
    return not label.lesion and label.type[0] in PAIRED_TYPES


def midline_x(volume: Volume) -> float:
    """Patient x (LPS mm; +x is the patient's left) of the body's centre: the mean x of the
    voxels brighter than air (CT: -500 HU; other modalities: the mean intensity), on every 4th
    voxel in-plane and every 2nd slice. The volume's centre when nothing is brighter."""
    sample = volume.voxels[::2, ::4, ::4]
    threshold = -500.0 if volume.modality == "CT" else float(sample.mean())
    inside = np.argwhere(sample > threshold)
    if len(inside) == 0:
        centre = (np.asarray(volume.shape, dtype=float) - 1) / 2
    else:
        centre = inside.mean(axis=0) * np.asarray([2, 4, 4])
    return float(volume.index_to_patient(centre)[0])


def left_of_midline(volume: Volume, box: tuple[slice, slice, slice], midline: float) -> np.ndarray:
    """Which voxels of ``box`` lie on the patient's left (patient x above ``midline``), computed
    one slice at a time: a float plane per slice, never a float array of the whole box."""
    (k0, k1), (j0, j1), (i0, i1) = ((s.start, s.stop) for s in box)
    sk, sj, si = volume.spacing
    direction = np.asarray(volume.direction, dtype=float)
    jj, ii = np.meshgrid(np.arange(j0, j1) * sj, np.arange(i0, i1) * si, indexing="ij")
    plane = volume.origin[0] + direction[0, 0] * ii + direction[0, 1] * jj
    out = np.empty((k1 - k0, j1 - j0, i1 - i0), dtype=bool)
    for n, k in enumerate(range(k0, k1)):
        out[n] = plane + direction[0, 2] * k * sk > midline
    return out


def with_vessels(lungs: np.ndarray, volume: Volume, midline: float | None = None) -> np.ndarray:
    """``lungs`` with what each lung encloses on its slice (vessels, airway walls, nodules):
    the holes of each side's mask, filled one slice at a time. Per side, because both lungs
    together enclose the mediastinum where they meet in front of and behind the heart."""
    out = lungs.copy()
    found = ndimage.find_objects(lungs.astype(np.uint8))
    if not found or found[0] is None:
        return out
    box = found[0]
    left = left_of_midline(volume, box, midline_x(volume) if midline is None else midline)
    local, target = lungs[box], out[box]  # a view: filling it fills ``out``
    for n in range(local.shape[0]):
        for side in (left[n], ~left[n]):
            plane = local[n] & side
            if plane.any():
                target[n] |= ndimage.binary_fill_holes(plane) & side
    return out


def measure_sides(mask: np.ndarray, volume: Volume, label: LabelInfo, box: tuple[slice, slice, slice],
                  midline: float, min_fraction: float = 0.01) -> list[Measurement]:
    """The left and the right part of a paired organ's mask (``mask`` is ``box`` of the volume),
    each measured as one structure: its diameter is that of its largest connected part (a
    stray island on one side is not the organ). A side with less than ``min_fraction`` of the
    voxels (a few voxels across the midline) is not reported."""
    left = left_of_midline(volume, box, midline)
    total = int(mask.sum())
    offset = (box[0].start, box[1].start, box[2].start)
    results = []
    for side, part in (("right", mask & ~left), ("left", mask & left)):
        count = int(part.sum())
        if count == 0 or count < min_fraction * total:
            continue
        labelled, pieces = components(part)
        whole = measure(part, volume, label, offset=offset, parts=1, side=side)
        if pieces > 1:
            sizes = np.bincount(labelled.ravel())[1:]
            largest = measure(labelled == int(np.argmax(sizes)) + 1, volume, label, offset=offset, parts=1, side=side)
            whole = replace(whole, parts=pieces, longest_axial_diameter_mm=largest.longest_axial_diameter_mm,
                            diameter_endpoints_kji=largest.diameter_endpoints_kji)
        results.append(whole)
    return results


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
                lesion_score: LesionScore | None = None, midline: float | None = None) -> list[Measurement]:
    """One measurement per present label (a diameter only when the label is one connected
    structure), then one per side of each paired organ (``is_paired``), then one per lesion
    (connected component of a lesion label), with its score: ``lesion_score(label,
    voxel_indices)``, e.g. the model's mean probability over the component (see
    probability_score).

    Each label is handled inside its own bounding box (one pass of ``find_objects`` finds them
    all), so no full-size mask or component map is ever made: on a 512 x 512 x 300 CT that
    would be 75 MB per mask and 300 MB per component map."""
    boxes = ndimage.find_objects(label_map)
    results = []
    sides = []
    lesion_boxes = []
    for info in labels:
        box = boxes[info.value - 1] if 0 < info.value <= len(boxes) else None
        if box is None:
            continue
        offset = (box[0].start, box[1].start, box[2].start)
        mask = label_map[box] == info.value
        results.append(measure(mask, volume, info, offset=offset))
        if info.lesion:
            lesion_boxes.append((info, box, offset))
        elif is_paired(info):
            sides.append((info, box))
    if sides and midline is None:
        midline = midline_x(volume)
    for info, box in sides:
        results.extend(measure_sides(label_map[box] == info.value, volume, info, box, midline))  # type: ignore[arg-type]
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
            results.append(measure(local, volume, info, lesion_index=n, score=score, offset=corner, parts=1))  # type: ignore[arg-type]
    return results
