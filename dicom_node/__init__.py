"""dicom-node: a DICOM network node that receives studies, keeps them durable, analyses them
with AI pipelines and sends standard DICOM results back.

The public API is small; everything else is an implementation module. The names load on first
use (PEP 562), so that importing any part of the package (the listener, a migration, the CLI)
does not also load the configuration schema and the volume reader with numpy and the model gate.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "NodeConfig": "config", "load_config": "config",
    "ConfigError": "errors", "NodeError": "errors", "PeerError": "errors", "StoreError": "errors",
    "VolumeError": "errors",
    "SeriesVolume": "storage.volume", "load_series": "storage.volume",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ConfigError",
    "NodeConfig",
    "NodeError",
    "PeerError",
    "SeriesVolume",
    "StoreError",
    "VolumeError",
    "__version__",
    "load_config",
    "load_series",
]
