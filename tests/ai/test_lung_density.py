"""Quantitative lung CT on phantoms with known answers: two whole lungs with vessels and a known
share of emphysema-like voxels, through the classical baseline's lung mask."""

from __future__ import annotations

import numpy as np
import pytest

from ai.lung_density import MAX_TAIL_SLICE_MM, lung_density
from ai.phantom import make_lung_phantom
from ai.pipeline import ClassicalCTPipeline
from ai.types import Volume


@pytest.fixture(scope="module")
def emphysematous() -> tuple:
    phantom = make_lung_phantom(11, emphysema=0.08)
    return phantom, ClassicalCTPipeline().run(phantom.volume)


def test_volumes_and_indices_per_side_match_the_truth_within_two_percent(emphysematous: tuple) -> None:
    phantom, findings = emphysematous
    density = findings.extra["lung_density"]
    assert density["withheld"] == [] and density["slice_thickness_mm"] == 1.0
    rows = {row["region"]: row for row in density["rows"]}
    assert set(rows) == {"lungs", "left lung", "right lung"}
    x = phantom.volume.index_to_patient(np.stack(np.meshgrid(0, 0, np.arange(phantom.lungs.shape[2]), indexing="ij"), -1))[..., 0]
    for side, sign in (("left", 1), ("right", -1)):
        row, truth = rows[f"{side} lung"], phantom.truth[side]
        assert row["side"] == side
        assert row["volume_ml"] == pytest.approx(truth["volume_ml"], rel=0.02)  # vessels inside count as lung
        assert row["laa950_percent"] == pytest.approx(100 * truth["laa950_fraction"], rel=0.02)
        assert truth["laa950_fraction"] > 0.04  # a real share, not a vacuous comparison of zeros
        own = phantom.lungs & (x.reshape(1, 1, -1) * sign > 0)
        values = phantom.volume.voxels[own]
        assert row["mld_hu"] == pytest.approx(float(values.mean()), abs=2.0)
        assert row["perc15_hu"] == pytest.approx(float(np.percentile(values, 15)), abs=3.0)
    both = rows["lungs"]
    assert both["volume_ml"] == pytest.approx(rows["left lung"]["volume_ml"] + rows["right lung"]["volume_ml"], abs=0.2)
    # More emphysema reads lower: the healthy phantom's Perc15 and MLD lie above these.
    healthy = ClassicalCTPipeline().run(make_lung_phantom(11).volume).extra["lung_density"]["rows"][0]
    assert healthy["laa950_percent"] < 0.1 and healthy["perc15_hu"] > both["perc15_hu"] and healthy["mld_hu"] > both["mld_hu"]


def test_thick_slices_withhold_the_low_tail_indices_and_keep_volume_and_mld() -> None:
    phantom = make_lung_phantom(12, spacing=(2.5, 1.5, 1.5), shape=(90, 200, 240), emphysema=0.08)
    density = ClassicalCTPipeline().run(phantom.volume).extra["lung_density"]
    assert density["slice_thickness_mm"] == 2.5 > MAX_TAIL_SLICE_MM
    assert len(density["withheld"]) == 1 and "LAA%-950 and Perc15: slices 2.5 mm thick" in density["withheld"][0]
    for row in density["rows"]:
        assert row["laa950_percent"] is None and row["perc15_hu"] is None
        assert row["volume_ml"] > 0 and row["mld_hu"] < -700
    left = next(r for r in density["rows"] if r["side"] == "left")
    assert left["volume_ml"] == pytest.approx(phantom.truth["left"]["volume_ml"], rel=0.03)


def test_a_recorded_thickness_above_the_spacing_counts() -> None:
    phantom = make_lung_phantom(13)
    v = phantom.volume
    thick = Volume(v.voxels, v.spacing, v.origin, v.direction, v.modality, slice_thickness_mm=3.0)
    density = lung_density(thick, phantom.lungs)
    assert density.slice_thickness_mm == 3.0 and density.rows[0].laa950_percent is None


def test_lungs_cut_off_by_the_scan_or_too_small_are_not_measured() -> None:
    phantom = make_lung_phantom(14)
    v = phantom.volume
    first = int(np.flatnonzero(phantom.lungs.any(axis=(1, 2)))[0])
    cut = Volume(v.voxels[first + 10:], v.spacing, tuple(v.index_to_patient(np.asarray([first + 10, 0, 0]))), v.direction)
    density = lung_density(cut, phantom.lungs[first + 10:])
    assert density.rows == () and "reach the scan's first slice" in density.withheld[0]
    one_side = phantom.lungs & (np.arange(v.shape[2]) > v.shape[2] / 2)[None, None, :]
    density = lung_density(v, one_side)
    assert density.rows == () and "the right lung holds 0 mL" in density.withheld[0]
    assert lung_density(v, np.zeros(v.shape, bool)).withheld == ("no lungs found",)
