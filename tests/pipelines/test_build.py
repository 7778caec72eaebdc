"""Configured pipelines: built by name or from a card folder anywhere; what stops one from
running is found when the node starts (a missing card, weights, or the runtime a format needs,
named with its pip line); described for ``dicom-node models``."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ai.pipeline import SegmentationPipeline
from ai.registry import BUILTIN_MODELS
from dicom_node.config import NodeConfig, PipelineSpec
from dicom_node.errors import ConfigError, PipelineError
from dicom_node.pipelines.build import build_pipeline, describe, pipeline_problems


def _card_folder(tmp_path: Path, **changes: object) -> Path:
    folder = tmp_path / "site-model"
    shutil.copytree(BUILTIN_MODELS / "ct-organs", folder, ignore=shutil.ignore_patterns("checkpoints", "stage2"))
    data = yaml.safe_load((folder / "card.yaml").read_text())
    data.update(changes)
    (folder / "card.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_a_card_folder_anywhere_builds_a_pipeline(tmp_path: Path) -> None:
    folder = _card_folder(tmp_path, name="site-liver", version="0.3")
    pipeline = build_pipeline(PipelineSpec(kind="model", path=folder, device="cpu"))
    assert isinstance(pipeline, SegmentationPipeline)
    assert (pipeline.name, pipeline.version, pipeline.card.folder) == ("site-liver", "0.3", folder)
    with pytest.raises(PipelineError, match="no model card"):
        build_pipeline(PipelineSpec(kind="model", path=tmp_path / "nowhere"))


def test_model_and_path_are_one_or_the_other(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    for spec in ({"kind": "model"}, {"kind": "model", "model": "ct-organs", "path": str(tmp_path)}):
        with pytest.raises(ConfigError, match="needs a model name .model:. or a card folder .path:., one of the two"):
            make_config(pipelines={"p": spec})


def test_start_up_names_every_pipeline_that_cannot_run(make_config: Callable[..., NodeConfig], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    onnx = _card_folder(tmp_path, format="onnx", weights="model.onnx")
    (onnx / "model.onnx").write_bytes(b"not really")  # present: only the runtime is missing below
    no_weights = _card_folder(tmp_path / "b", weights="gone.ts")
    unknown = _card_folder(tmp_path / "c", format="tensorflow-savedmodel")
    config = make_config(pipelines={
        "fine": {"kind": "model", "model": "ct-organs"},
        "baseline": {"kind": "classical"},
        "onnx": {"kind": "model", "path": str(onnx)},
        "no-weights": {"kind": "model", "path": str(no_weights)},
        "unknown": {"kind": "model", "path": str(unknown)},
        "no-card": {"kind": "model", "path": str(tmp_path / "nowhere")},
        "no-name": {"kind": "model", "model": "not-installed"},
    })
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    problems = pipeline_problems(config)
    text = "\n".join(problems)
    assert len(problems) == 5, text
    assert "pipelines.onnx" in text and "needs the Python package onnxruntime: pip install 'dicom-node[onnx]'" in text
    assert "pipelines.no-weights" in text and "gone.ts do not exist" in text
    assert "pipelines.unknown" in text and "format 'tensorflow-savedmodel' has no loader" in text
    assert f"pipelines.no-card: {tmp_path / 'nowhere' / 'card.yaml'}: no model card" in text
    assert "pipelines.no-name: no model named 'not-installed'" in text
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert not any("onnxruntime" in p for p in pipeline_problems(config))


def test_describe_says_kind_labels_and_source(tmp_path: Path) -> None:
    folder = _card_folder(tmp_path, name="site-liver")
    row = describe("liver", PipelineSpec(kind="model", path=folder))
    assert (row["kind"], row["model"], row["format"], row["source"]) == ("model", "site-liver", "torchscript", str(folder))
    assert row["labels"][:2] == ["lungs", "liver"]
    baseline = describe("baseline", PipelineSpec(kind="classical"))
    assert (baseline["model"], baseline["format"]) == ("ct-classical-baseline", "rules")
    assert "error" in describe("gone", PipelineSpec(kind="model", path=tmp_path / "nowhere"))


def test_a_command_pipeline_is_checked_and_described(make_config: Callable[..., NodeConfig]) -> None:
    import sys

    config = make_config(pipelines={
        "module": {"kind": "command", "command": [sys.executable, "-c", "pass"], "domain": {"modality": ["CT"]},
                   "name": "site-liver", "version": "1.2", "codes": {"liver": {"category": ["123037004", "SCT", "Anatomical Structure"],
                                                                                 "type": ["10200004", "SCT", "Liver"]}}},
        "missing": {"kind": "command", "command": ["/opt/nowhere/run"], "domain": {"modality": ["CT"]}},
        "bad-domain": {"kind": "command", "command": [sys.executable], "domain": {"modality": ["CT"], "air_hu": [0, -10]}},
    })
    problems = "\n".join(pipeline_problems(config))
    assert "pipelines.missing: command '/opt/nowhere/run' is not an executable" in problems
    assert "pipelines.bad-domain" in problems and "air_hu: the lower bound 0.0 is above the upper bound -10.0" in problems
    assert "pipelines.module" not in problems
    row = describe("module", config.pipelines["module"])
    assert (row["kind"], row["model"], row["version"], row["labels"]) == ("command", "site-liver", "1.2", ["liver"])
    with pytest.raises(ConfigError, match="kind command needs a command and a domain"):
        make_config(pipelines={"x": {"kind": "command", "command": ["true"]}})
