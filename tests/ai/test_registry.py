from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ai.registry import BUILTIN_MODELS, ModelCard, ModelCardError, ModelRegistry, load_model

from ..support import processes


def test_shipped_card_is_valid_and_honest() -> None:
    card = ModelRegistry().get("ct-organs")
    assert card.data.task == "segmentation" and card.data.modality == "CT"
    assert "NOT FOR CLINICAL USE" in card.data.limitations and "synthetic" in card.data.limitations
    names = [l.name for l in card.data.labels]
    assert names == ["lungs", "liver", "spleen", "kidneys", "bone", "liver lesion", "lung nodule"]
    assert card.classes == 8
    assert all(l.category[1] == "SCT" and l.type[1] == "SCT" for l in card.data.labels)
    assert [l.lesion for l in card.data.labels].count(True) == 2


def test_bad_card_names_the_key(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    data = yaml.safe_load((BUILTIN_MODELS / "ct-organs" / "card.yaml").read_text())
    data["task"] = "guessing"
    del data["labels"][0]["type"]
    (folder / "card.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ModelCardError) as info:
        ModelCard.from_folder(folder)
    assert "task: Input should be 'segmentation' or 'classification'" in str(info.value)
    assert "labels.0.type: Field required" in str(info.value)


def test_unknown_format_and_missing_weights(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(BUILTIN_MODELS / "ct-organs", folder, ignore=shutil.ignore_patterns("checkpoints", "model.ts"))
    card = ModelCard.from_folder(folder)
    with pytest.raises(ModelCardError, match="weights: .* does not exist"):
        load_model(card, torch.device("cpu"))
    data = yaml.safe_load((folder / "card.yaml").read_text())
    data["format"] = "tensorflow-savedmodel"
    (folder / "card.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ModelCardError, match="no loader for 'tensorflow-savedmodel'"):
        load_model(ModelCard.from_folder(folder), torch.device("cpu"))


def test_models_command_lists_the_shipped_model(tmp_path: Path) -> None:
    result = processes.run([sys.executable, "-m", "dicom_node.cli", "--config", str(Path(__file__).parents[2] / "config" / "node.yaml"),
                             "models", "--json"], timeout=120)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    [model] = [m for m in listed["installed"] if m["name"] == "ct-organs"]
    assert model["weights_present"] is True and model["task"] == "segmentation"
    # The shipped configuration's pipelines, with where each comes from.
    pipelines = {row["pipeline"]: row for row in listed["pipelines"]}
    assert pipelines["ct-organs"]["source"].endswith("ai/models/ct-organs")
    assert pipelines["ct-baseline"]["kind"] == "classical"
