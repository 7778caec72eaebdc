"""Intensity and texture statistics of a CT volume: what a model's training data looked like,
and how far a new scan lies from it.

Computed on a sample about 5 x 3 x 3 mm apart (``SAMPLE_MM``), inside the body (> -500 HU,
holes filled slice by slice so the lungs count).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..types import Volume

#: Feature name -> the least spread that counts (a floor under the training data's standard
#: deviation: phantoms are far more alike than patients, and a distance measured in their own
#: tiny spread would refuse a phantom on another grid).
FEATURE_FLOORS: dict[str, float] = {
    "body_p05": 10.0, "body_p25": 20.0, "body_p50": 6.0, "body_p75": 6.0, "body_p95": 15.0,
    "fraction_fat": 0.045, "fraction_soft": 0.045, "fraction_dense": 0.006, "fraction_lung": 0.03,
    "soft_texture": 3.5,
}


#: The grid the statistics are taken on: about this many mm between samples (slices, pixels),
#: whatever the scan's own grid, so a 0.7 mm and a 2 mm scan are measured alike and a
#: 512x512x300 series costs a few hundredths of its analysis.
SAMPLE_MM = (5.0, 3.0, 3.0)


def sample(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The voxels taken every ``SAMPLE_MM`` (or every voxel where the grid is coarser), and
    the spacing of the sample."""
    steps = [max(1, int(round(target / spacing))) for target, spacing in zip(SAMPLE_MM, volume.spacing)]
    grid = volume.voxels[::steps[0], ::steps[1], ::steps[2]]
    return np.asarray(grid, dtype=np.float32), tuple(s * n for s, n in zip(volume.spacing, steps))  # type: ignore[return-value]


def intensity_features(volume: Volume) -> dict[str, float]:
    """HU percentiles and tissue fractions inside the body, and the soft-tissue texture (the
    median in-plane local standard deviation of voxels between 0 and 100 HU), on ``sample``."""
    hu, _ = sample(volume)
    body = np.asarray([ndimage.binary_fill_holes(s) for s in hu > -500])  # lungs are holes in 2-D
    values = hu[body]
    if values.size < 100:
        return {name: float("nan") for name in FEATURE_FLOORS}
    p05, p25, p50, p75, p95 = (float(v) for v in np.percentile(values, [5, 25, 50, 75, 95]))
    inside = hu[ndimage.binary_erosion(body, iterations=1)] if body.any() else values
    total = float(max(inside.size, 1))
    mean = ndimage.uniform_filter(hu, size=(1, 3, 3))
    square = ndimage.uniform_filter(hu * hu, size=(1, 3, 3))
    local_std = np.sqrt(np.maximum(square - mean * mean, 0.0))
    soft = (mean > 0) & (mean < 100) & (hu > -500)
    return {
        "body_p05": p05, "body_p25": p25, "body_p50": p50, "body_p75": p75, "body_p95": p95,
        "fraction_fat": float(((inside > -200) & (inside < -30)).sum() / total),
        "fraction_soft": float(((inside >= -30) & (inside < 150)).sum() / total),
        "fraction_dense": float((inside >= 300).sum() / total),
        "fraction_lung": float(((inside > -950) & (inside < -500)).sum() / total),
        "soft_texture": float(np.median(local_std[soft])) if soft.any() else float("nan"),
    }


def feature_distance(features: dict[str, float], reference: dict[str, tuple[float, float]]) -> tuple[float, str]:
    """The largest standardised distance of a feature from the reference (mean, std), each std
    floored by ``FEATURE_FLOORS``, and the name of that feature."""
    worst, name = 0.0, ""
    for key, (mean, std) in reference.items():
        value = features.get(key, float("nan"))
        spread = max(std, FEATURE_FLOORS.get(key, 1e-6))
        distance = float("inf") if not np.isfinite(value) else abs(value - mean) / spread
        if distance > worst:
            worst, name = distance, key
    return worst, name
