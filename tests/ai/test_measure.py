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


KIDNEYS = LabelInfo(4, "kidneys", ("123037004", "SCT", "Anatomical Structure"), ("64033007", "SCT", "Kidney"))


def _torso_with_kidneys(direction: np.ndarray | None = None, right_kidney: bool = True) -> tuple[Volume, np.ndarray, dict]:
    """A 1 mm grid, a soft-tissue body (an ellipse, air around it), a kidney-like ellipsoid each
    side of the midline (patient x = 0 at i = 60) with semi-axes (in-plane x, y; z) in mm."""
    z, y, x = np.mgrid[0:40, 0:80, 0:120].astype(float)
    x -= 60.0
    voxels = np.where(((x / 55) ** 2 + ((y - 40) / 35) ** 2) <= 1, 40.0, -1000.0).astype(np.float32)
    labels = np.zeros(voxels.shape, np.uint8)
    truth = {}
    for side, cx, axes in (("left", 30.0, (9.0, 14.0, 12.0)), ("right", -32.0, (11.0, 16.0, 10.0))):
        if side == "right" and not right_kidney:
            continue
        inside = ((x - cx) / axes[0]) ** 2 + ((y - 50) / axes[1]) ** 2 + ((z - 20) / axes[2]) ** 2 <= 1
        labels[inside] = 4
        voxels[inside] = 160.0
        truth[side] = (float(inside.sum()) / 1000.0, 2 * max(axes[:2]))
    volume = Volume(voxels, (1.0, 1.0, 1.0), (-60.0, 0.0, 0.0), np.eye(3) if direction is None else direction)
    return volume, labels, truth


def test_a_paired_organ_is_measured_per_side_and_its_total_carries_no_diameter() -> None:
    volume, labels, truth = _torso_with_kidneys()
    results = measure_all(labels, volume, (KIDNEYS,))
    total = next(m for m in results if m.kind == "label")
    assert total.parts == 2 and total.longest_axial_diameter_mm is None and total.diameter_endpoints_kji is None
    assert total.volume_ml == pytest.approx(sum(v for v, _ in truth.values()))
    sides = {m.side: m for m in results if m.kind == "side"}
    assert set(sides) == {"left", "right"}
    for side, (ml, diameter) in truth.items():
        m = sides[side]
        assert m.name == f"{side} kidney" and m.parts == 1
        assert m.volume_ml == pytest.approx(ml, rel=0.02)
        assert m.longest_axial_diameter_mm == pytest.approx(diameter, abs=2.0)  # within two voxels
        assert m.mean == pytest.approx(160.0)
    # The patient's left is +x (LPS): the left kidney's centroid lies at positive x.
    assert sides["left"].centroid_patient[0] > 0 > sides["right"].centroid_patient[0]
    # A point a viewer can show for the total lies on a kidney, not between them (the spine).
    k, j, i = (int(v) for v in total.anchor_kji)
    assert labels[k, j, i] == 4


def test_sides_follow_the_patient_not_the_array() -> None:
    """Columns running to the patient's right (direction's i axis -x): the array's right half is
    the patient's left."""
    flipped = np.diag([-1.0, 1.0, 1.0])
    volume, labels, _ = _torso_with_kidneys(direction=flipped)
    volume = Volume(volume.voxels, volume.spacing, (60.0, 0.0, 0.0), flipped)
    sides = {m.side: m for m in measure_all(labels, volume, (KIDNEYS,)) if m.kind == "side"}
    assert sides["right"].centroid_kji[2] > 60 > sides["left"].centroid_kji[2]
    assert sides["left"].centroid_patient[0] > 0


def test_one_kidney_is_one_structure() -> None:
    volume, labels, truth = _torso_with_kidneys(right_kidney=False)
    results = measure_all(labels, volume, (KIDNEYS,))
    total = next(m for m in results if m.kind == "label")
    assert total.parts == 1 and total.longest_axial_diameter_mm == pytest.approx(truth["left"][1], abs=2.0)
    assert [m.side for m in results if m.kind == "side"] == ["left"]


def test_lesions_carry_their_own_diameter_and_the_label_row_none() -> None:
    """Two spherical lesions of known radius: each lesion's longest axial diameter is its own
    (2 r), and the row of both together has volume and mean only (the demo used to print 75.9 mm,
    a distance across both)."""
    z, y, x = np.mgrid[0:40, 0:100, 0:100].astype(float)
    labels = np.zeros(z.shape, np.uint8)
    labels[2:38, 5:95, 5:95] = 2
    radii = {(20.0, 25.0, 25.0): 6.0, (20.0, 70.0, 72.0): 10.0}
    for (cz, cy, cx), r in radii.items():
        labels[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r] = 6
    volume = Volume(np.where(labels == 6, 20.0, 60.0).astype(np.float32), (1.0, 1.0, 1.0))
    results = measure_all(labels, volume, (ORGAN, LESION))
    row = next(m for m in results if m.kind == "label" and m.label == 6)
    assert row.parts == 2 and row.longest_axial_diameter_mm is None
    lesions = sorted((m for m in results if m.kind == "lesion"), key=lambda m: m.volume_ml)
    for m, r in zip(lesions, sorted(radii.values())):
        assert m.longest_axial_diameter_mm == pytest.approx(2 * r, abs=1.0)
        assert m.volume_ml == pytest.approx(4 / 3 * np.pi * r**3 / 1000, rel=0.1)
    liver = next(m for m in results if m.label == 2)
    assert liver.parts == 1 and liver.longest_axial_diameter_mm is not None  # one organ, one piece
