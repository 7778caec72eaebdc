from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ai.training import TrainConfig, dice, export_torchscript, hd95, lesion_sensitivity, phantom_cases, train

STEPS = [{"op": "clip", "min": -1000, "max": 1000}, {"op": "scale", "factor": 0.001}]


def test_a_few_steps_lower_the_loss_and_export(tmp_path: Path) -> None:
    cases = list(phantom_cases([1, 2], STEPS, spacing=4.0, shape=(48, 64, 64)))
    losses: list[float] = []
    config = TrainConfig(steps=40, batch=2, patch=32, lr=3e-3, checkpoint_every=20, features=(4, 8, 16, 32))
    model = train(cases, config, tmp_path / "run", on_step=lambda step, loss: losses.append(loss))
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.9 * np.mean(losses[:8])
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    export_torchscript(model, tmp_path / "model.ts", patch=32)
    with pytest.warns(DeprecationWarning):  # torch 2.13 marks TorchScript loading deprecated
        loaded = torch.jit.load(str(tmp_path / "model.ts"))
    assert loaded(torch.zeros(1, 1, 16, 24, 32)).shape == (1, 8, 16, 24, 32)
    # Resuming a finished run does no more steps.
    more: list[float] = []
    train(cases, config, tmp_path / "run", on_step=lambda step, loss: more.append(loss))
    assert more == []


def test_metrics() -> None:
    a = np.zeros((10, 10, 10), bool)
    a[2:6, 2:6, 2:6] = True
    b = np.roll(a, 1, axis=2)
    assert dice(a, a) == 1.0 and dice(a, b) == pytest.approx(0.75)
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(2.0)
    assert hd95(a, np.zeros_like(a), (1, 1, 1)) == float("inf")
    truth = np.zeros((10, 10, 10), bool)
    truth[1, 1, 1] = truth[8, 8, 8] = True
    assert lesion_sensitivity(truth, truth & (np.arange(10)[:, None, None] < 5)) == (1, 2)


def test_batchnorm_statistics_are_recomputed_then_frozen_for_the_last_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ai.training as training

    cases = list(phantom_cases([3], STEPS, spacing=4.0, shape=(40, 48, 48)))
    snapshots: list[dict[str, torch.Tensor]] = []
    original = training.recalibrate_batchnorm

    def recalibrate(model, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(model, *args, batches=2, **{k: v for k, v in kwargs.items() if k != "batches"})
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(training, "recalibrate_batchnorm", recalibrate)
    config = TrainConfig(steps=8, batch=2, patch=16, lr=3e-3, checkpoint_every=100, features=(4, 8), freeze_norm_at=0.5)
    steps: list[int] = []
    model = train(cases, config, tmp_path / "run", on_step=lambda step, loss: steps.append(step))
    assert steps == list(range(1, 9)) and len(snapshots) == 1  # recomputed once, at step 4
    final = model.state_dict()
    stats = [k for k in final if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in final if k.endswith("weight") and "body.0" in k]
    assert stats and all(torch.equal(final[k], snapshots[0][k]) for k in stats)  # frozen since
    assert any(not torch.equal(final[k], snapshots[0][k]) for k in weights)  # while training went on
