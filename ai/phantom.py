"""A CT phantom with ground truth: a torso of analytic shapes with realistic HU, and random
hypodense liver lesions and lung nodules. Seeded, so the same seed gives the same phantom.

Used to train and evaluate the shipped model, in tests, demos and benchmarks. Everything is in
patient millimetres (LPS: +x to the patient's left, +y posterior, +z towards the head) and
sampled on whatever grid is asked for, so spacing and slice thickness are free parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .types import Volume

# Label values of the phantom's ground truth (and of the shipped ct-organs model).
BACKGROUND, LUNG, LIVER, SPLEEN, KIDNEY, BONE, LIVER_LESION, LUNG_NODULE = range(8)
LABEL_NAMES = {LUNG: "lungs", LIVER: "liver", SPLEEN: "spleen", KIDNEY: "kidneys", BONE: "bone",
               LIVER_LESION: "liver lesion", LUNG_NODULE: "lung nodule"}

# Portal-venous phase, the standard protocol of an abdominal CT: the contrast agent lifts the
# liver to about 100 HU, the spleen some 20 HU above it and the kidneys (nephrographic
# enhancement) well above both, while muscle stays near 45 HU. In a non-contrast scan spleen,
# kidneys and muscle all lie within noise of each other (40-50 HU), which no reader, human or
# model, separates by intensity. The organ values move together by a common enhancement offset
# (contrast timing differs between scans) and each by a little of its own.
HU = {"air": -1000.0, "fat": -100.0, "soft": 45.0, "lung": -850.0, "liver": 100.0, "spleen": 120.0,
      "kidney": 165.0, "bone": 700.0}
ENHANCED = ("liver", "spleen", "kidney")


@dataclass(frozen=True)
class Lesion:
    """A ground-truth lesion: its label, centre (mm, LPS) and semi-axes (mm)."""

    label: int
    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]


@dataclass(frozen=True)
class Phantom:
    volume: Volume  # voxels in HU
    labels: np.ndarray  # uint8, same shape
    lesions: tuple[Lesion, ...]


def _ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, center: tuple[float, float, float],
               axes: tuple[float, float, float]) -> np.ndarray:
    return (((x - center[0]) / axes[0]) ** 2 + ((y - center[1]) / axes[1]) ** 2 + ((z - center[2]) / axes[2]) ** 2) <= 1.0


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    liver_lesions: tuple[int, int] = (0, 3),
    lung_nodules: tuple[int, int] = (0, 3),
    noise_hu: tuple[float, float] = (8.0, 20.0),
) -> Phantom:
    """A random torso sampled on a (k, j, i) grid.

    ``shape`` and ``spacing`` default to a random clinical-like grid (pixel spacing 0.6-1.0 mm,
    slice thickness 1-5 mm, 512 x 512 in-plane); pass small ones for fast tests and training.
    Lesion counts are drawn from the inclusive ranges given.
    """
    rng = np.random.default_rng(seed)
    if spacing is None:
        pixel = float(rng.uniform(0.6, 1.0))
        spacing = (float(rng.choice([1.0, 1.25, 2.0, 2.5, 3.0, 5.0])), pixel, pixel)
    if shape is None:
        shape = (max(8, int(round(400.0 / spacing[0]))), 512, 512)
    nk, nj, ni = shape
    sk, sj, si = spacing
    length = nk * sk

    # Body: an elliptic cylinder that fits in the field of view.
    fov_x, fov_y = ni * si, nj * sj
    a = min(rng.uniform(140, 175), 0.46 * fov_x)
    b = min(rng.uniform(95, 125), 0.46 * fov_y, a * 0.85)
    cx, cy = rng.uniform(-0.03, 0.03) * fov_x, rng.uniform(-0.03, 0.03) * fov_y
    z0 = -length / 2
    zd = z0 + length * rng.uniform(0.48, 0.58)  # diaphragm level

    k = (np.arange(nk) + 0.5) * sk + z0
    j = (np.arange(nj) - nj / 2 + 0.5) * sj
    i = (np.arange(ni) - ni / 2 + 0.5) * si
    z, y, x = np.meshgrid(k, j, i, indexing="ij", sparse=True)

    hu = np.full(shape, HU["air"], dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    body = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0
    body = np.broadcast_to(body, shape)
    fat_depth = rng.uniform(0.86, 0.93)
    inner = np.broadcast_to(((x - cx) / (a * fat_depth)) ** 2 + ((y - cy) / (b * fat_depth)) ** 2 <= 1.0, shape)
    hu[body] = HU["fat"]
    hu[inner] = HU["soft"] + rng.uniform(-5, 5)

    enhancement = rng.uniform(-15, 15)

    def organ(label: int, tissue: str, center: tuple[float, float, float], axes: tuple[float, float, float]) -> np.ndarray:
        mask = _ellipsoid(x, y, z, center, axes) & inner
        hu[mask] = HU[tissue] + (enhancement if tissue in ENHANCED else 0.0) + rng.uniform(-4, 4)
        labels[mask] = label
        return mask

    jitter = lambda scale: rng.uniform(1 - scale, 1 + scale)  # noqa: E731
    lung_axes = (0.36 * a * jitter(0.1), 0.62 * b * jitter(0.1), 0.24 * length * jitter(0.1))
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        center = (cx + side * 0.45 * a, cy - 0.05 * b, zd + lung_axes[2] * 0.95)
        lungs |= organ(LUNG, "lung", center, (lung_axes[0] * jitter(0.05), lung_axes[1], lung_axes[2]))
    liver = organ(LIVER, "liver", (cx - 0.33 * a, cy + 0.02 * b, zd - 0.11 * length * jitter(0.1)),
                  (0.48 * a * jitter(0.08), 0.62 * b * jitter(0.08), 0.12 * length * jitter(0.1)))
    organ(SPLEEN, "spleen", (cx + 0.55 * a, cy + 0.28 * b, zd - 0.09 * length),
          (0.17 * a * jitter(0.1), 0.26 * b * jitter(0.1), 0.07 * length * jitter(0.1)))
    for side in (-1, 1):
        center = (cx + side * 0.42 * a, cy + 0.5 * b, zd - 0.28 * length * jitter(0.05))
        axes = (0.13 * a * jitter(0.1), 0.2 * b * jitter(0.1), 0.07 * length * jitter(0.1))
        # Perirenal fat: each kidney lies in its own fat capsule (where no other organ is).
        hu[_ellipsoid(x, y, z, center, tuple(1.3 * v for v in axes)) & inner & (labels == 0)] = HU["fat"]
        organ(KIDNEY, "kidney", center, axes)
    # Spine: a vertebral column along the whole torso, posterior midline.
    spine_r = 0.12 * a * jitter(0.1)
    spine = np.broadcast_to((x - cx) ** 2 + (y - (cy + 0.62 * b)) ** 2 <= spine_r**2, shape) & inner
    hu[spine] = HU["bone"] + rng.uniform(-150, 250)
    labels[spine] = BONE

    lesions: list[Lesion] = []

    def place(label: int, host: np.ndarray, count: int, radius: tuple[float, float], contrast: tuple[float, float]) -> None:
        # Lesion centres well inside the host organ (eroded by the largest radius, in voxels).
        margin = max(1, int(radius[1] / min(spacing)))
        core = ndimage.binary_erosion(host, iterations=margin) if host.any() else host
        candidates = np.argwhere(core)
        for _ in range(count):
            if len(candidates) == 0:
                return
            kji = candidates[rng.integers(len(candidates))]
            center = (float(i[kji[2]]), float(j[kji[1]]), float(k[kji[0]]))
            r = rng.uniform(*radius)
            axes = (r * jitter(0.2), r * jitter(0.2), r * jitter(0.2))
            mask = _ellipsoid(x, y, z, center, axes) & host
            if mask.sum() < 4:
                continue
            hu[mask] = np.median(hu[host]) + rng.uniform(*contrast)
            labels[mask] = label
            lesions.append(Lesion(label, center, axes))

    place(LIVER_LESION, liver, int(rng.integers(liver_lesions[0], liver_lesions[1] + 1)), (6.0, 15.0), (-70.0, -45.0))
    place(LUNG_NODULE, lungs, int(rng.integers(lung_nodules[0], lung_nodules[1] + 1)), (4.0, 10.0), (850.0, 900.0))

    # Scanner blur and noise.
    hu = ndimage.gaussian_filter(hu, sigma=(0.6 * min(1.0, 1.0 / sk), 0.6, 0.6))
    hu += rng.normal(0.0, rng.uniform(*noise_hu), size=shape).astype(np.float32)
    volume = Volume(hu.astype(np.float32), spacing, origin=(float(i[0]), float(j[0]), float(k[0])), modality="CT")
    return Phantom(volume, labels, tuple(lesions))


@dataclass(frozen=True)
class LungPhantom:
    """A chest with two whole lungs (inside the scan's extent), vessels in them and, where asked
    for, emphysema-like voxels; ``truth`` holds each side's lung volume (mL, vessels included),
    the fraction of its voxels made emphysematous (-1000 HU) and the fraction a noiseless scan
    reads below -950 HU (the blur lifts the rims of small spheres above it)."""

    volume: Volume
    lungs: np.ndarray  # bool: lung parenchyma, vessels and emphysema
    truth: dict[str, dict[str, float]]


def make_lung_phantom(seed: int, spacing: tuple[float, float, float] = (1.0, 1.5, 1.5), emphysema: float = 0.0,
                      shape: tuple[int, int, int] = (220, 200, 240), noise_hu: float = 15.0) -> LungPhantom:
    """Lungs of -850 HU with a few vessels (+40 HU) and, for ``emphysema`` > 0, spheres of 3-6 mm
    at -1000 HU placed at random in them until that fraction of each lung is emphysematous (a
    centrilobular pattern; voxels, not spheres, are counted). Scanner blur and noise as in
    ``make_phantom``."""
    rng = np.random.default_rng(seed)
    nk, nj, ni = shape
    sk, sj, si = spacing
    z, y, x = np.meshgrid((np.arange(nk) - nk / 2 + 0.5) * sk, (np.arange(nj) - nj / 2 + 0.5) * sj,
                          (np.arange(ni) - ni / 2 + 0.5) * si, indexing="ij", sparse=True)
    hu = np.full(shape, HU["air"], dtype=np.float32)
    a, b = 0.44 * ni * si, 0.42 * nj * sj
    body = np.broadcast_to((x / a) ** 2 + (y / b) ** 2 <= 1.0, shape)
    hu[body] = HU["soft"]
    lungs = np.zeros(shape, dtype=bool)
    truth: dict[str, dict[str, float]] = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):  # LPS: +x is the patient's left
        axes = (0.34 * a * rng.uniform(0.9, 1.1), 0.7 * b * rng.uniform(0.9, 1.1), 0.42 * nk * sk * rng.uniform(0.9, 1.0))
        lung = _ellipsoid(x, y, z, (sign * 0.5 * a, 0.0, 0.0), axes)
        hu[lung] = HU["lung"]
        for _ in range(4):  # vessels running head to foot: holes in each slice's lung
            cx, cy = sign * 0.5 * a + rng.uniform(-0.4, 0.4) * axes[0], rng.uniform(-0.4, 0.4) * axes[1]
            vessel = np.broadcast_to((x - cx) ** 2 + (y - cy) ** 2 <= rng.uniform(2.0, 4.0) ** 2, shape) & lung
            hu[vessel] = 40.0
        emphysematous = np.zeros(shape, dtype=bool)
        target = emphysema * float(lung.sum())
        candidates = np.argwhere(lung & (hu == HU["lung"]))
        count = 0
        while count < target and len(candidates):
            kji = candidates[rng.integers(len(candidates))]
            r = rng.uniform(3.0, 6.0)
            reach = np.ceil(r / np.asarray(spacing)).astype(int)
            box = tuple(slice(max(0, c - n), c + n + 1) for c, n in zip(kji, reach))
            centre = (float(x[0, 0, kji[2]]), float(y[0, kji[1], 0]), float(z[kji[0], 0, 0]))
            sphere = _ellipsoid(x[..., box[2]], y[:, box[1]], z[box[0]], centre, (r, r, r))
            add = sphere & lung[box] & (hu[box] == HU["lung"]) & ~emphysematous[box]
            emphysematous[box] |= add
            count += int(add.sum())
        hu[emphysematous] = HU["air"]
        lungs |= lung
        truth[side] = {"volume_ml": float(lung.sum()) * float(np.prod(spacing)) / 1000.0}
    hu = ndimage.gaussian_filter(hu, sigma=(0.6 * min(1.0, 1.0 / sk), 0.6, 0.6))
    # What a noiseless scanner reads below -950 HU: the scanner's blur leaves the rim of each
    # emphysematous sphere above the threshold, which no method recovers; noise then scatters.
    for side, sign in (("left", 1.0), ("right", -1.0)):
        own = lungs & np.broadcast_to(x * sign > 0, shape)
        truth[side]["laa950_fraction"] = float((hu[own] < -950.0).mean())
        truth[side]["emphysematous_fraction"] = emphysema
    hu += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    origin = (float(x[0, 0, 0]), float(y[0, 0, 0]), float(z[0, 0, 0]))
    return LungPhantom(Volume(hu.astype(np.float32), spacing, origin, modality="CT"), lungs, truth)
