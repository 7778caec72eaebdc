"""Fine-tuning a card's network on corrected cases: a new card with a bumped version, the base's
labels and rules, domain statistics recomputed from what it trained on, held-out figures against
the base model in training.json, and limitations that say how little real data it saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ai.finetune import LabelledCase, base_weights, bumped, finetune
from ai.phantom import make_phantom
from ai.registry import ModelCard, ModelRegistry
from ai.training import IGNORE, dice_ce_loss


def test_versions_are_bumped() -> None:
    assert (bumped("2.0.0"), bumped("2.3.7"), bumped("1.0"), bumped("x")) == ("2.1.0", "2.4.0", "1.1.0", "x.ft1")


def test_the_base_weights_load_into_the_network() -> None:
    from ai.unet import UNet3D

    card = ModelRegistry().get("ct-organs")
    UNet3D(classes=card.classes, features=(8, 16, 32, 64)).load_state_dict(base_weights(card))


def test_ignored_voxels_take_no_loss() -> None:
    import torch

    logits = torch.randn(1, 3, 4, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4, 4))
    partial = target.clone()
    partial[0, :2] = IGNORE
    changed = partial.clone()
    changed[0, :2] = (target[0, :2] + 1) % 3  # other labels where it was ignored: the loss must not see them
    with_ignore = dice_ce_loss(logits, partial, 3)
    assert float(with_ignore) != float(dice_ce_loss(logits, target, 3))
    changed[0, :2] = IGNORE
    assert float(dice_ce_loss(logits, changed, 3)) == pytest.approx(float(with_ignore))


def test_a_fine_tuned_card(tmp_path: Path) -> None:
    base = ModelRegistry().get("ct-organs")
    cases = []
    for seed in (7301, 7302):
        phantom = make_phantom(seed, shape=(40, 72, 72), spacing=(2.5, 2.5, 2.5))
        labels = phantom.labels.copy()
        if seed == 7302:  # a correction that named only the lungs
            labels[labels != 1] = IGNORE
        cases.append(LabelledCase(f"case-{seed}", phantom.volume, labels))
    result = finetune(base, cases, tmp_path / "new", steps=3, phantoms=1, phantom_shape=(40, 72, 72), evaluate_phantoms=1)
    card = ModelCard.from_folder(tmp_path / "new")
    assert (card.name, card.version) == ("ct-organs", "2.1.0") and result.card.version == "2.1.0"
    assert [l.name for l in card.data.labels] == [l.name for l in base.data.labels]
    assert card.data.output_checks == base.data.output_checks
    assert card.weights_path.exists() and card.weights_path.read_bytes() != base.weights_path.read_bytes()
    assert "1 corrected case(s) from this site" in card.data.limitations and "very little" in card.data.limitations
    assert card.data.training["fine_tuned_from"] == "ct-organs 2.0.0"
    before, after = base.data.domain.intensity, card.data.domain.intensity
    assert after is not None and before is not None and after.features != before.features
    assert after.max_distance == before.max_distance and card.data.domain.trained_on.count == base.data.domain.trained_on.count + 1
    training = json.loads((tmp_path / "new" / "training.json").read_text())
    assert len(training["held_out"]) == 1
    held = training["evaluation"]["held_out_cases"][training["held_out"][0]]
    assert set(held) == {"base", "new"} and "lungs" in held["base"] and "lungs" in held["new"]
    assert all(0.0 <= v <= 1.0 for v in held["new"].values())
    assert set(training["evaluation"]["phantoms"]["phantom 5000"]) == {"base", "new"}
    assert np.isfinite(training["stages"][0]["seconds"])
