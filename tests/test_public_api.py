"""The curated public names, and the seam rule: ai never imports pydicom or pynetdicom."""

from __future__ import annotations

import ast
from pathlib import Path

import ai
import dicom_node

from .support import processes

ROOT = Path(__file__).resolve().parents[1]


def test_exported_names_are_pinned() -> None:
    assert sorted(dicom_node.__all__) == ["ConfigError", "NodeConfig", "NodeError", "PeerError", "SeriesVolume", "StoreError",
                                          "VolumeError", "__version__", "load_config", "load_series"]
    assert sorted(ai.__all__) == ["ClassicalCTPipeline", "Findings", "LabelInfo", "Measurement", "ModelCard", "ModelRegistry",
                                  "SegmentationPipeline", "Volume"]


def test_ai_never_imports_dicom_libraries() -> None:
    for path in (ROOT / "ai").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("pydicom", "pynetdicom", "highdicom", "dicom_node")), f"{path.name} imports {name}"


def test_listener_modules_do_not_load_torch() -> None:
    """A listener process (one per core or two) never runs a model; with torch loaded each took
    300 MB more, and every node start churned gigabytes of memory."""
    import sys

    code = ("import sys, dicom_node.cli, dicom_node.service.node, dicom_node.net.storage_scp, dicom_node.storage.volume, dicom_node.results; "
            "print('torch' in sys.modules)")
    out = processes.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "False"
    assert ai.ClassicalCTPipeline.__name__ == "ClassicalCTPipeline"  # the public names still load on use
