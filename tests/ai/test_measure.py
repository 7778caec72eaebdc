from __future__ import annotations

import numpy as np
import pytest

from ai.measure import longest_axial_diameter, measure, measure_all, probability_score
from ai.types import LabelInfo, Volume

LESION = LabelInfo(6, "liver lesion", ("49755003", "SCT", "Morphologically Altered Structure"), ("52988006", "SCT", "Lesion"), lesion=True)
ORGAN = LabelInfo(2, "liver", ("123037004", "SCT", "Anatomical Structure"), ("10200004", "SCT", "Liver"))


def test_box_measurements() -> None:
    voxels = np.zeros((10, 20, 20), np.float32)
    voxels[2:5, 4:8, 6:16] = 50.0
    volume = Volume(voxels, (2.0, 0.5, 1.0), (100.0, 0.0, 0.0))
    m = measure(voxels > 0, volume, ORGAN)
    assert m.volume_ml == pytest.approx(3 * 4 * 10 * 2.0 * 0.5 * 1.0 / 1000)
    assert (m.mean, m.std) == (50.0, 0.0)
    assert m.bbox == ((2, 4, 6), (4, 7, 15))
    assert m.centroid_kji == pytest.approx((3.0, 5.5, 10.5))
    assert m.centroid_patient == pytest.approx((100.0 + 10.5, 5.5 * 0.5, 3.0 * 2.0))
    # Diagonal of a 4 x 10 voxel rectangle between voxel centres: rows 3 * 0.5 mm, columns 9 * 1 mm.
    assert m.longest_axial_diameter_mm == pytest.approx(np.hypot(1.5, 9.0))


def test_disc_diameter() -> None:
    yy, xx = np.mgrid[0:41, 0:41]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2)[None]
    d, ends = longest_axial_diameter(disc, (1.0, 0.8, 0.8))
    assert d == pytest.approx(30 * 0.8, abs=0.8)
    assert ends is not None and ends[0][0] == 0.0


def test_lesions_measured_one_by_one_with_scores() -> None:
    labels = np.zeros((10, 30, 30), np.uint8)
    labels[1:9, 1:29, 1:29] = 2
    labels[3:5, 3:6, 3:6] = 6
    labels[6:8, 20:25, 20:25] = 6
    volume = Volume(np.where(labels == 6, 20.0, 60.0).astype(np.float32), (1.0, 1.0, 1.0))
    probability = np.where(labels == 6, 0.9, 0.01).astype(np.float32)
    results = measure_all(labels, volume, (ORGAN, LESION), probability_score({6: probability}, labels.shape))
    lesions = [m for m in results if m.lesion_index is not None]
    assert [m.lesion_index for m in lesions] == [1, 2]
    assert sorted(m.voxel_count for m in lesions) == [18, 50]
    assert all(m.score == pytest.approx(0.9) and m.mean == 20.0 for m in lesions)
    assert [m.name for m in results if m.lesion_index is None] == ["liver", "liver lesion"]
