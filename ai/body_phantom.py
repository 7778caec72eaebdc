"""A head-to-pelvis CT phantom whose regions lie at known heights: for the region reader
(``ai/trust/region.py``) and the gate, cropped to one region or taken whole.

Along the patient's z (LPS +z towards the head): pelvis 0-200 mm (iliac wings and femoral heads
beside a sacrum, a bladder), abdomen 200-380 mm (liver, kidneys, spine), chest 380-620 mm (two
lungs, the heart, the spine, ribs), neck 620-700 mm, head 700-900 mm (a skull round the brain).
"""

from __future__ import annotations

import numpy as np

from .types import Volume

#: Each region's z range (mm).
REGION_Z = {"PELVIS": (0.0, 200.0), "ABDOMEN": (200.0, 380.0), "CHEST": (380.0, 620.0), "NECK": (620.0, 700.0),
            "HEAD": (700.0, 900.0)}


def make_body_phantom(seed: int, spacing: tuple[float, float, float] = (5.0, 3.0, 3.0), size: int = 128,
                      noise_hu: float = 12.0) -> Volume:
    """The whole phantom, 900 mm long; crop it with :func:`crop_region`."""
    rng = np.random.default_rng(seed)
    sk, sj, si = spacing
    nk = int(round(900.0 / sk))
    z = ((np.arange(nk) + 0.5) * sk)[:, None, None]
    y = ((np.arange(size) - size / 2 + 0.5) * sj)[None, :, None]
    x = ((np.arange(size) - size / 2 + 0.5) * si)[None, None, :]
    hu = np.full((nk, size, size), -1000.0, dtype=np.float32)

    def put(where: np.ndarray, value: float) -> None:
        hu[np.broadcast_to(where, hu.shape)] = value

    def band(lo: float, hi: float) -> np.ndarray:
        return (z >= lo) & (z < hi)

    def ellipse(cx: float, cy: float, a: float, b: float) -> np.ndarray:
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0

    trunk = band(0, 620) & ellipse(0, 0, 165, 112)
    put(trunk, -100.0)  # fat
    put(trunk & ellipse(0, 0, 150, 100), 45.0)  # muscle and organs
    spine = band(0, 700) & ellipse(0, 70, 16, 16)
    # Pelvis: iliac wings and femoral heads far from the midline, the sacrum, the bladder.
    put(band(0, 200) & ellipse(0, 10, 40, 30), 10.0)
    put(band(80, 200) & (ellipse(-95, 20, 32, 13) | ellipse(95, 20, 32, 13)), 600.0)
    put(band(0, 80) & (ellipse(-90, 0, 22, 22) | ellipse(90, 0, 22, 22)), 700.0)
    # Abdomen: liver on the patient's right (-x), kidneys, the spine behind.
    put(band(260, 380) & ellipse(-60, -5, 70, 60), 100.0)
    put(band(220, 300) & (ellipse(-60, 50, 20, 28) | ellipse(60, 50, 20, 28)), 160.0)
    # Chest: lungs either side of the heart, ribs round them.
    put(band(380, 610) & (ellipse(-80, 0, 60, 80) | ellipse(80, 0, 60, 80)), -850.0)
    put(band(400, 520) & ellipse(10, -20, 45, 40), 40.0)
    ribs = band(380, 600) & ellipse(0, 0, 150, 100) & ~ellipse(0, 0, 144, 94) & (np.sin(z / 12.0) > 0.3)
    put(ribs, 500.0)
    put(spine, 650.0)
    # Neck and head.
    put(band(620, 700) & ellipse(0, 0, 60, 55), 45.0)
    put(band(620, 700) & ellipse(0, 0, 8, 8), -1000.0)  # the airway
    head = band(700, 900) & ellipse(0, 0, 75, 92)
    put(head, 45.0)  # scalp
    put(head & ellipse(0, 0, 71, 88), 900.0)  # skull
    put(head & ellipse(0, 0, 64, 81), 35.0)  # brain
    hu += rng.normal(0.0, noise_hu, size=hu.shape).astype(np.float32)
    origin = (float(x.ravel()[0]), float(y.ravel()[0]), float(z.ravel()[0]))
    return Volume(hu, spacing, origin, modality="CT")


def crop_region(volume: Volume, lo_mm: float, hi_mm: float) -> Volume:
    """The slices whose centres lie between ``lo_mm`` and ``hi_mm`` (patient z)."""
    z = volume.origin[2] + np.arange(volume.shape[0]) * volume.spacing[0]
    keep = np.flatnonzero((z >= lo_mm) & (z < hi_mm))
    origin = (volume.origin[0], volume.origin[1], float(z[keep[0]]))
    return Volume(volume.voxels[keep[0]:keep[-1] + 1], volume.spacing, origin, volume.direction, volume.modality)
