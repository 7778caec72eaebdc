"""Only analysis workers load model libraries: `serve` started as an operator starts it (the
shipped configuration, with its model pipeline), every process of the tree is looked at, and
the supervisor and listener processes map no torch, MONAI, nnU-Net or onnxruntime file. Their
memory (under 150 MB PSS each) is what scripts/process_footprint.py reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _footprint_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("process_footprint", ROOT / "scripts" / "process_footprint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_only_analysis_workers_load_model_libraries(tmp_path: Path) -> None:
    footprint = _footprint_script()
    rows = footprint.measure(footprint.write_config(tmp_path), settle=3.0)
    table = "\n".join(f"{r['pid']} {r['name']}: {r['pss_mb']} MB, {r['model_libraries'] or 'no model libraries'}"
                      for r in rows)
    names = [str(r["name"]) for r in rows]
    assert "dn-supervisor" in names and names.count("dn-listener") >= 2, f"not the processes expected:\n{table}"
    assert "dn-worker" in names, f"no analysis worker started:\n{table}"
    loaded = [r for r in rows if r["name"] != "dn-worker" and r["model_libraries"]]
    assert not loaded, f"model libraries outside the analysis workers:\n{table}"
