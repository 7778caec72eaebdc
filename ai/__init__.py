"""The numeric side of the node: preprocessing, models, inference, post-processing,
measurements, training and the CT phantom. Never imports pydicom or pynetdicom: a ``Volume``
comes in, ``Findings`` go out.

The public names are loaded on first use (PEP 562): the DICOM listener imports ``ai.types``
for its data classes, and importing the pipelines here would load torch into every listener
process (300 MB each, measured) that never runs a model."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ClassicalCTPipeline", "Findings", "LabelInfo", "Measurement", "ModelCard", "ModelRegistry",
           "SegmentationPipeline", "Volume"]

_HOMES = {
    "ClassicalCTPipeline": ".pipeline", "SegmentationPipeline": ".pipeline",
    "ModelCard": ".registry", "ModelRegistry": ".registry",
    "Findings": ".types", "LabelInfo": ".types", "Measurement": ".types", "Volume": ".types",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ai' has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
