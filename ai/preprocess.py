"""Preprocessing operations a model card can name, as plain functions on Volumes.

Each op keeps the Volume's geometry right (a resample moves voxel centres, a crop moves the
origin), so whatever a model predicts can be mapped back onto the input voxel for voxel.

Model cards name them as steps, e.g.::

    preprocessing:
      - {op: resample, spacing: [2.0, 2.0, 2.0]}
      - {op: clip, min: -1000, max: 1000}
      - {op: scale, factor: 0.001}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .types import Volume


def resample(volume: Volume, spacing: Sequence[float], order: int = 1) -> Volume:
    """Resample to (about) ``spacing`` mm, keeping the physical extent of the grid.

    The new shape is the extent divided by the target spacing, rounded; the exact new spacing
    follows from it. Voxel edges of the first and last voxels stay where they were, so voxel
    centres shift by half the change in spacing, and the origin with them.
    """
    old = np.asarray(volume.spacing, dtype=float)
    shape = np.asarray(volume.shape)
    new_shape = np.maximum(1, np.round(shape * old / np.asarray(spacing, dtype=float))).astype(int)
    return resample_to_shape(volume, tuple(int(n) for n in new_shape), order=order)


def resample_to_shape(volume: Volume, shape: tuple[int, int, int], order: int = 1) -> Volume:
    """Resample onto ``shape`` voxels over the same physical extent (see :func:`resample`)."""
    old = np.asarray(volume.spacing, dtype=float)
    factors = np.asarray(shape) / np.asarray(volume.shape)
    if np.allclose(factors, 1.0):
        return volume
    new_spacing = old / factors
    data = ndimage.zoom(volume.voxels, factors, order=order, mode="nearest", grid_mode=True, prefilter=False)
    shift_kji = (new_spacing - old) / 2.0
    origin = np.asarray(volume.origin) + np.asarray(volume.direction) @ shift_kji[::-1]
    return Volume(data.astype(volume.voxels.dtype, copy=False), tuple(float(s) for s in new_spacing),
                  tuple(float(o) for o in origin), volume.direction, volume.modality,
                  max(volume.effective_thickness_mm, float(new_spacing[0])))


def resample_labels(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto ``shape`` over the same extent."""
    if labels.shape == tuple(shape):
        return labels
    factors = np.asarray(shape) / np.asarray(labels.shape)
    return ndimage.zoom(labels, factors, order=0, mode="nearest", grid_mode=True, prefilter=False)


def clip(volume: Volume, min: float, max: float) -> Volume:  # noqa: A002 - card keys
    """Intensity windowing: values outside [min, max] are clipped."""
    return volume.with_voxels(np.clip(volume.voxels, min, max))


def window(volume: Volume, center: float, width: float) -> Volume:
    """Clip to a display-style window (center, width) and map it to [0, 1]."""
    low = center - width / 2
    return volume.with_voxels(((np.clip(volume.voxels, low, low + width) - low) / width).astype(np.float32))


def scale(volume: Volume, factor: float, offset: float = 0.0) -> Volume:
    """(x + offset) * factor: range normalisation with fixed constants."""
    return volume.with_voxels(((volume.voxels + offset) * factor).astype(np.float32))


def zscore(volume: Volume, mask_above: float | None = None) -> Volume:
    """Zero mean, unit variance; statistics over voxels above ``mask_above`` if given (body)."""
    data = volume.voxels
    sample = data[data > mask_above] if mask_above is not None else data
    if sample.size == 0:
        sample = data
    std = float(sample.std()) or 1.0
    return volume.with_voxels(((data - float(sample.mean())) / std).astype(np.float32))


def denoise(volume: Volume, method: str = "bilateral", sigma_spatial: float = 1.0, sigma_range: float = 40.0,
            iterations: int = 5, kappa: float = 30.0) -> Volume:
    """Edge-preserving denoising.

    ``bilateral``: a 3x3x3 bilateral filter (spatial Gaussian x intensity Gaussian): noise in
    flat regions is averaged away, across an edge the intensity term keeps voxels apart.
    ``anisotropic``: Perona-Malik diffusion, ``iterations`` steps with conductance ``kappa``.
    """
    data = volume.voxels.astype(np.float32)
    if method == "bilateral":
        padded = np.pad(data, 1, mode="edge")
        num = np.zeros_like(data)
        den = np.zeros_like(data)
        nk, nj, ni = data.shape
        for dk in (-1, 0, 1):
            for dj in (-1, 0, 1):
                for di in (-1, 0, 1):
                    shifted = padded[1 + dk:1 + dk + nk, 1 + dj:1 + dj + nj, 1 + di:1 + di + ni]
                    w = np.exp(-(dk * dk + dj * dj + di * di) / (2 * sigma_spatial**2)) * np.exp(
                        -((shifted - data) ** 2) / (2 * sigma_range**2))
                    num += w * shifted
                    den += w
        return volume.with_voxels(num / den)
    if method == "anisotropic":
        out = data.copy()
        for _ in range(iterations):
            flux = np.zeros_like(out)
            for axis in range(3):
                forward = np.diff(out, axis=axis, append=np.take(out, [-1], axis=axis))
                backward = -np.diff(out, axis=axis, prepend=np.take(out, [0], axis=axis))
                flux += np.exp(-((forward / kappa) ** 2)) * forward + np.exp(-((backward / kappa) ** 2)) * backward
            out += 0.1 * flux
        return volume.with_voxels(out)
    raise ValueError(f"unknown denoise method {method!r} (bilateral, anisotropic)")


@dataclass(frozen=True)
class Crop:
    """Where a crop sits in the volume it came from: (k, j, i) start and stop."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    def paste(self, cropped: np.ndarray, full_shape: tuple[int, int, int], fill: int = 0) -> np.ndarray:
        out = np.full(full_shape, fill, dtype=cropped.dtype)
        out[tuple(slice(a, b) for a, b in zip(self.start, self.stop))] = cropped
        return out


def body_crop(volume: Volume, threshold: float = -500.0, margin: int = 4, multiple: int = 1) -> Crop:
    """The bounding box of the largest connected region above ``threshold`` (the body), with a
    margin, grown so each side is a multiple of ``multiple`` where the volume allows."""
    mask = volume.voxels > threshold
    labelled, count = ndimage.label(mask)
    if count == 0:
        return Crop((0, 0, 0), volume.shape)
    sizes = ndimage.sum_labels(mask, labelled, index=np.arange(1, count + 1))
    # The largest region's box, from find_objects: listing its voxels (np.argwhere) would cost
    # 24 bytes per voxel of body.
    box = ndimage.find_objects(labelled, max_label=int(np.argmax(sizes)) + 1)[-1]
    del labelled
    start = np.maximum(np.asarray([s.start for s in box]) - margin, 0)
    stop = np.minimum(np.asarray([s.stop for s in box]) + margin, volume.shape)
    for axis in range(3):
        size = stop[axis] - start[axis]
        want = int(np.ceil(size / multiple) * multiple)
        extra = min(want, volume.shape[axis]) - size
        start[axis] = max(0, start[axis] - extra // 2)
        stop[axis] = min(volume.shape[axis], start[axis] + size + extra)
        start[axis] = max(0, stop[axis] - size - extra)
    return Crop(tuple(int(s) for s in start), tuple(int(s) for s in stop))  # type: ignore[arg-type]


def crop(volume: Volume, region: Crop) -> Volume:
    """The sub-volume ``region`` with its origin moved to the first kept voxel."""
    data = volume.voxels[tuple(slice(a, b) for a, b in zip(region.start, region.stop))]
    origin = volume.index_to_patient(np.asarray(region.start, dtype=float))
    return Volume(data, volume.spacing, tuple(float(o) for o in origin), volume.direction, volume.modality,
                  volume.slice_thickness_mm)


OPS: dict[str, Callable[..., Volume]] = {
    "resample": lambda v, spacing, order=1: resample(v, spacing, order),
    "clip": clip,
    "window": window,
    "scale": scale,
    "zscore": zscore,
    "denoise": denoise,
}


def apply_steps(volume: Volume, steps: Sequence[Mapping[str, Any]]) -> Volume:
    """Apply model-card steps in order; an unknown op or argument is a ValueError naming it."""
    for step in steps:
        params = dict(step)
        name = params.pop("op", None)
        if name not in OPS:
            raise ValueError(f"unknown preprocessing op {name!r}; known: {', '.join(sorted(OPS))}")
        try:
            volume = OPS[name](volume, **params)
        except TypeError as exc:
            raise ValueError(f"preprocessing op {name!r}: {exc}") from exc
    return volume
