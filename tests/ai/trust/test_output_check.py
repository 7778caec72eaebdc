"""Per-structure confidence and plausibility: reported with its confidence, or withheld with why;
each rule moved until it changes the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from ai.trust.output_check import StructureRule, check_structures, structure_confidence
from ai.types import LabelInfo, Volume

CODE = ("1", "SCT", "x")
LABELS = (LabelInfo(1, "lungs", CODE, CODE), LabelInfo(2, "liver", CODE, CODE))


def _scene() -> tuple[np.ndarray, Volume, np.ndarray]:
    """Two lungs above a liver (k grows head-wards: direction's third column is +S)."""
    label_map = np.zeros((40, 40, 40), dtype=np.uint8)
    label_map[25:35, 5:20, 5:15] = 1
    label_map[25:35, 5:20, 25:35] = 1
    label_map[5:15, 10:30, 10:30] = 2
    probability = np.where(label_map == 1, 0.95, np.where(label_map == 2, 0.6, 0.99)).astype(np.float32)
    return label_map, Volume(np.zeros(label_map.shape, np.float32), (3.0, 3.0, 3.0)), probability


def test_confidence_is_the_mean_winning_probability() -> None:
    label_map, _, probability = _scene()
    assert structure_confidence(label_map, probability, LABELS) == pytest.approx({1: 0.95, 2: 0.6})


def test_a_plausible_confident_structure_is_reported() -> None:
    label_map, volume, probability = _scene()
    rules = {"lungs": StructureRule(min_confidence=0.9, max_components=2, above="liver")}
    out, verdicts = check_structures(label_map, volume, LABELS, structure_confidence(label_map, probability, LABELS), rules)
    assert out is label_map
    assert [(v.name, v.withheld) for v in verdicts] == [("lungs", None), ("liver", None)]


@pytest.mark.parametrize(("structure", "value", "rule", "words"), [
    ("liver", 2, StructureRule(min_confidence=0.7), "confidence 0.60 under 0.70"),
    ("liver", 2, StructureRule(max_components=1, component_ml=0.1), None),
    ("lungs", 1, StructureRule(min_confidence=0.96), "confidence 0.95 under 0.96"),
    ("lungs", 1, StructureRule(max_components=1), "2 separate parts of at least 5 mL, where there are at most 1"),
    ("lungs", 1, StructureRule(above="liver", min_confidence=0.5), None),
])
def test_each_rule_moves_the_verdict(structure: str, value: int, rule: StructureRule, words: str | None) -> None:
    label_map, volume, probability = _scene()
    out, verdicts = check_structures(label_map, volume, LABELS, structure_confidence(label_map, probability, LABELS),
                                     {structure: rule})
    assert next(v for v in verdicts if v.name == structure).withheld == words
    assert bool((out == value).any()) is (words is None)
    assert (label_map == value).any()  # the input is never changed


def test_lungs_below_the_liver_are_not_lungs() -> None:
    """Gas in the bowel, called lung: it lies below the liver."""
    label_map, volume, probability = _scene()
    flipped = label_map[::-1].copy()
    _, verdicts = check_structures(flipped, volume, LABELS, structure_confidence(flipped, probability[::-1], LABELS),
                                   {"lungs": StructureRule(above="liver")})
    assert "below the liver's" in str(next(v for v in verdicts if v.name == "lungs").withheld)
