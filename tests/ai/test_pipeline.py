"""The AI pipelines on phantoms: the shipped model's targets on a small fixed held-out set,
alignment with the input grid, and the classical baseline."""

from __future__ import annotations

import numpy as np
import pytest

from ai.phantom import BONE, LIVER_LESION, LUNG, LUNG_NODULE, make_phantom
from ai.pipeline import ClassicalCTPipeline, SegmentationPipeline
from ai.registry import ModelRegistry
from ai.training import dice, lesion_sensitivity
from ai.types import Volume

HELD_OUT = (9001, 9002, 9003)  # training used seeds 1000-1039


@pytest.fixture(scope="module")
def pipeline() -> SegmentationPipeline:
    return SegmentationPipeline(ModelRegistry().get("ct-organs"), device="cpu")


@pytest.fixture(scope="module")
def results(pipeline: SegmentationPipeline) -> list[tuple[object, object]]:
    out = []
    for seed in HELD_OUT:
        phantom = make_phantom(seed, shape=(120, 176, 176), spacing=(2.0, 2.0, 2.0), liver_lesions=(2, 2), lung_nodules=(2, 2))
        out.append((phantom, pipeline.run(phantom.volume)))
    return out


def test_shipped_model_meets_its_targets(results: list) -> None:
    organ_dice = {name: [] for name in ("lungs", "liver", "spleen", "kidneys", "bone")}
    lesion_dice = {"liver lesion": [], "lung nodule": []}
    detected = total = 0
    for phantom, findings in results:
        for value, name in enumerate(["", "lungs", "liver", "spleen", "kidneys", "bone", "liver lesion", "lung nodule"]):
            if not name:
                continue
            score = dice(findings.label_map == value, phantom.labels == value)
            (organ_dice if name in organ_dice else lesion_dice)[name].append(score)
        for value in (LIVER_LESION, LUNG_NODULE):
            d, t = lesion_sensitivity(phantom.labels == value, findings.label_map == value)
            detected, total = detected + d, total + t
        assert findings.findings == {"liver lesion present": True, "lung nodule present": True}
    means = {name: float(np.mean(v)) for name, v in {**organ_dice, **lesion_dice}.items()}
    print("held-out Dice:", {k: round(v, 3) for k, v in means.items()}, f"sensitivity {detected}/{total}")
    assert all(means[name] >= 0.90 for name in organ_dice), means
    assert all(means[name] >= 0.70 for name in lesion_dice), means
    assert detected / total >= 0.8


def test_no_lesion_is_reported_where_there_is_none(pipeline: SegmentationPipeline) -> None:
    """Findings drive what a radiologist is shown first: a phantom without lesions must read
    "absent" for both (the liver's blurred edge once passed for a lesion)."""
    phantom = make_phantom(9004, shape=(120, 176, 176), spacing=(2.0, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    findings = pipeline.run(phantom.volume)
    assert findings.findings == {"liver lesion present": False, "lung nodule present": False}
    assert not np.isin(findings.label_map, (LIVER_LESION, LUNG_NODULE)).any()


def test_findings_carry_measurements_and_identity(results: list) -> None:
    phantom, findings = results[0]
    assert (findings.model_name, findings.model_version) == ("ct-organs", "2.0.0")
    assert set(findings.scores) == {"liver lesion present", "lung nodule present"}
    assert all(0.0 <= v <= 1.0 for v in findings.scores.values())
    lungs = next(m for m in findings.measurements if m.name == "lungs" and m.lesion_index is None)
    truth_ml = float((phantom.labels == LUNG).sum()) * phantom.volume.voxel_volume_ml
    assert lungs.volume_ml == pytest.approx(truth_ml, rel=0.1)
    assert -900 < lungs.mean < -750  # measured on the input's HU
    # Two lungs: the row of both carries no diameter; each side its own.
    assert lungs.longest_axial_diameter_mm is None
    sides = {m.side: m for m in findings.measurements if m.name.endswith(" lung")}
    assert set(sides) == {"left", "right"}
    assert all(m.longest_axial_diameter_mm > 50 for m in sides.values())
    for side, sign in (("left", 1), ("right", -1)):
        truth = (phantom.labels == LUNG) & ((np.arange(phantom.labels.shape[2]) - phantom.labels.shape[2] / 2) * sign > 0)
        assert sides[side].volume_ml == pytest.approx(float(truth.sum()) * phantom.volume.voxel_volume_ml, rel=0.1)


def test_label_map_is_aligned_with_an_odd_oblique_input(pipeline: SegmentationPipeline) -> None:
    phantom = make_phantom(9100, shape=(50, 150, 140), spacing=(5.0, 2.6, 2.6), liver_lesions=(0, 0), lung_nodules=(0, 0))
    t = np.deg2rad(10)
    tilted = Volume(phantom.volume.voxels, phantom.volume.spacing, (3.0, 4.0, 5.0),
                    np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]))
    findings = pipeline.run(tilted)
    assert findings.label_map.shape == phantom.labels.shape
    for value in (LUNG, BONE):
        predicted, truth = findings.label_map == value, phantom.labels == value
        shift = np.abs(np.argwhere(predicted).mean(0) - np.argwhere(truth).mean(0))
        assert shift.max() < 0.5, f"label {value} centroid off by {shift} voxels"


def test_classical_baseline_on_a_phantom() -> None:
    phantom = make_phantom(9200, shape=(60, 128, 128), spacing=(5.0, 3.0, 3.0))
    findings = ClassicalCTPipeline().run(phantom.volume)
    names = [label.name for label in findings.labels]
    assert names == ["body", "lungs", "bone", "lung nodule"]
    lungs = (findings.label_map == 2) | (findings.label_map == 4)
    truth_lungs = (phantom.labels == LUNG) | (phantom.labels == LUNG_NODULE)
    assert dice(lungs | (findings.label_map == 3) & truth_lungs, truth_lungs) > 0.85
    assert dice(findings.label_map == 3, phantom.labels == BONE) > 0.8
    body = findings.label_map > 0
    assert body[phantom.labels > 0].mean() > 0.99


@pytest.mark.parametrize("seed", [5, 11, 21, 3])
def test_classical_baseline_finds_each_phantom_lung_nodule_and_nothing_else(seed: int) -> None:
    phantom = make_phantom(seed, shape=(48, 128, 128), spacing=(2.5, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 3))
    findings = ClassicalCTPipeline().run(phantom.volume)
    found = [m for m in findings.measurements if m.lesion_index is not None]
    truth = [lesion for lesion in phantom.lesions if lesion.label == LUNG_NODULE]
    assert len(found) == len(truth)
    for lesion in truth:  # each true nodule has a found one centred within its radius
        hit = [m for m in found
               if np.linalg.norm(np.asarray(m.centroid_patient) - np.asarray(lesion.center)) < max(lesion.semi_axes)]
        assert hit, f"nodule at {lesion.center} not found"


@pytest.mark.parametrize("change", [{"NODULE_MAX_ELONGATION": 0.5}, {"NODULE_MIN_LUNG_SHELL": 1.01},
                                    {"NODULE_MIN_PEAK_HU": 500.0}])
def test_each_nodule_rule_of_the_baseline_moves_what_it_finds(change: dict[str, float]) -> None:
    """The candidate rules (roundness, lung all around, a solid core) keep the phantom's nodules;
    moved past them, the nodules go (the real scans' side: tests/e2e/test_real_scans.py)."""
    phantom = make_phantom(5, shape=(48, 128, 128), spacing=(2.5, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(3, 3))
    found = [m for m in ClassicalCTPipeline().run(phantom.volume).measurements if m.lesion_index is not None]
    moved = type("Moved", (ClassicalCTPipeline,), change)()
    assert len(found) == 3
    assert [m for m in moved.run(phantom.volume).measurements if m.lesion_index is not None] == []


def test_every_structure_is_reported_with_its_confidence(results: list) -> None:
    """In domain nothing is withheld, and each structure carries its confidence (over the card's
    thresholds: its output_checks)."""
    for _, findings in results:
        assert findings.extra["withheld"] == {}
        assert set(findings.extra["confidence"]) >= {"lungs", "liver", "spleen", "kidneys", "bone"}
        assert all(0.8 <= value <= 1.0 for name, value in findings.extra["confidence"].items() if "lesion" not in name
                   and "nodule" not in name)


def test_a_finding_needs_a_confident_host(pipeline: SegmentationPipeline, results: list) -> None:
    """Moved past the liver's confidence, the host threshold withholds "liver lesion present"
    with the reason; the lesion's own score is unchanged."""
    phantom, findings = results[0]
    card = pipeline.card
    strict = type(card)(card.data.model_copy(update={"classification": [
        c.model_copy(update={"host_min_confidence": 0.999}) if c.label == LIVER_LESION else c
        for c in card.data.classification]}), card.folder)
    moved = SegmentationPipeline(strict, device="cpu")
    moved._model = pipeline.model
    again = moved.run(phantom.volume)
    assert findings.findings["liver lesion present"] is True
    assert "liver lesion present" not in again.findings and "liver lesion present" not in again.scores
    assert again.extra["withheld"]["liver lesion present"].startswith("its host, the liver, is not reported")
    assert again.extra["withheld"]["liver lesion"] == again.extra["withheld"]["liver lesion present"]
    assert not (again.label_map == LIVER_LESION).any()  # no segment either: not "present", not "absent"
    assert again.findings["lung nodule present"] is True


def test_a_structure_under_its_confidence_is_withheld(pipeline: SegmentationPipeline, results: list) -> None:
    from ai.trust.output_check import StructureRule

    phantom, _ = results[0]
    card = pipeline.card
    checks = {**card.data.output_checks, "spleen": StructureRule(min_confidence=0.999)}
    moved = SegmentationPipeline(type(card)(card.data.model_copy(update={"output_checks": checks}), card.folder), device="cpu")
    moved._model = pipeline.model
    findings = moved.run(phantom.volume)
    assert "under 1.00" in findings.extra["withheld"]["spleen"]
    assert not (findings.label_map == 3).any()
    assert not [m for m in findings.measurements if m.name == "spleen"]


def test_per_voxel_uncertainty_agrees_with_the_structure_confidence(pipeline: SegmentationPipeline, results: list) -> None:
    """Asked for, the uncertainty (1 - winning probability) lies on the input grid, is 0 where
    the model did not run (air outside the body crop), is higher on organ borders than inside,
    and its complement averaged over a structure is that structure's reported confidence."""
    from scipy import ndimage

    from ai.types import UNCERTAINTY_STEPS

    phantom, findings = results[0]
    assert findings.uncertainty is None  # not asked for: no extra full-size array
    asking = SegmentationPipeline(pipeline.card, device="cpu", uncertainty=True)
    asking._model = pipeline.model
    again = asking.run(phantom.volume)
    u = again.uncertainty
    assert u is not None and u.dtype == np.uint8 and u.shape == phantom.volume.shape
    assert np.array_equal(again.label_map, findings.label_map)
    values = u.astype(np.float32) / UNCERTAINTY_STEPS
    assert values.max() <= 1 - 1 / pipeline.card.classes + 0.01
    assert values[phantom.volume.voxels < -900].mean() < 0.01
    for name in ("lungs", "liver", "spleen", "bone"):
        value = next(i.value for i in again.labels if i.name == name)
        mask = again.label_map == value
        assert abs((1 - values[mask]).mean() - again.extra["confidence"][name]) < 0.01, name
    liver = again.label_map == 2
    border = liver & ~ndimage.binary_erosion(liver, iterations=2)
    core = ndimage.binary_erosion(liver, iterations=4)
    assert values[border].mean() > 3 * values[core].mean()
