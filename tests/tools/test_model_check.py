"""``dicom-node models [--check]``: every configured pipeline with its kind, labels and source;
--check loads and runs each on a small phantom and fails on the one that cannot run; ``serve``
refuses to start with such a pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicom_node.config import PipelineSpec
from dicom_node.tools.model_check import check_pipeline

from ..support import processes


def _cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DICOM_NODE_CONFIG"}
    return processes.run([sys.executable, "-m", "dicom_node.cli", *args], timeout=timeout,
                          cwd=cwd, env=env)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scripts.export_onnx import export

    tmp = tmp_path_factory.mktemp("models")
    data = {
        "node": {"ae_title": "AI_NODE", "port": 0},
        "storage": {"path": str(tmp / "storage")}, "index": {"path": str(tmp / "index.sqlite")},
        "audit": {"path": str(tmp / "audit.jsonl")},
        "pipelines": {"organs-onnx": {"kind": "model", "path": str(export("ct-organs")), "device": "cpu"},
                      "baseline": {"kind": "classical"},
                      "broken": {"kind": "model", "path": str(tmp / "nowhere")}},
        "routes": [{"name": "ct", "match": {"modality": "CT"}, "pipeline": ["organs-onnx", "baseline"]}],
    }
    path = tmp / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_check_runs_every_pipeline_and_fails_on_the_broken_one(config_file: Path) -> None:
    result = _cli("--config", str(config_file), "models", "--check", "--json")
    assert result.returncode == 1, result.stderr
    assert "failed the check: broken" in result.stderr
    rows = {row["pipeline"]: row for row in json.loads(result.stdout)["pipelines"]}
    assert rows["organs-onnx"]["format"] == "onnx" and rows["organs-onnx"]["check"].startswith("ok: ct-organs 2.0.0 ran")
    assert "lungs" in rows["organs-onnx"]["check"] and "liver" in rows["organs-onnx"]["check"]
    assert rows["baseline"]["check"].startswith("ok: ct-classical-baseline")
    assert rows["broken"]["check"].startswith("failed: PipelineError") and "no model card" in rows["broken"]["check"]


def test_serve_refuses_to_start_with_a_pipeline_that_cannot_run(config_file: Path) -> None:
    result = _cli("--config", str(config_file), "serve", timeout=60)
    assert result.returncode == 2
    assert "a configured pipeline cannot run" in result.stderr and "pipelines.broken" in result.stderr
    assert "listening" not in result.stderr


def test_models_lists_the_installed_ones_without_a_configuration(tmp_path: Path) -> None:
    result = _cli("models", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert listed["pipelines"] == [] and "ct-organs" in [m["name"] for m in listed["installed"]]


def test_a_check_reports_a_run_that_raises(tmp_path: Path) -> None:
    """A card whose weights are not a model: loading fails at the first run, the check says so."""
    import shutil

    from ai.registry import BUILTIN_MODELS

    folder = tmp_path / "bad"
    shutil.copytree(BUILTIN_MODELS / "ct-organs", folder, ignore=shutil.ignore_patterns("checkpoints", "stage2"))
    (folder / "model.ts").write_bytes(b"garbage")
    outcome = check_pipeline("bad", PipelineSpec(kind="model", path=folder, device="cpu"))
    assert outcome.startswith("failed: RuntimeError"), outcome


def test_a_command_module_is_checked_on_dicom_files() -> None:
    modules = Path(__file__).parents[1] / "support" / "modules"
    spec = PipelineSpec.model_validate({"kind": "command", "command": [sys.executable, str(modules / "nifti_module.py")],
                                        "name": "site-nifti", "version": "1.0", "domain": {"modality": ["CT"]}})
    assert check_pipeline("nifti", spec).startswith("ok: site-nifti 1.0 ran in ")
    assert "found air in body, bone" in check_pipeline("nifti", spec)
    failing = spec.model_copy(update={"command": [sys.executable, str(modules / "failing_module.py")]})
    assert check_pipeline("failing", failing).startswith("failed: CommandFailed: site-nifti: exit status 1")
