"""The curated public names, and the seam rule: ai never imports pydicom or pynetdicom."""

from __future__ import annotations

import ast
from pathlib import Path

import ai
import dicom_node

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
