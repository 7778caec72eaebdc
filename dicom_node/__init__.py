"""dicom-node: a DICOM network node that receives studies, keeps them durable, analyses them
with AI pipelines and sends standard DICOM results back.

The public API is small; everything else is an implementation module.
"""

from .config import NodeConfig, load_config
from .errors import ConfigError, NodeError, PeerError, StoreError, VolumeError
from .volume import SeriesVolume, load_series

__version__ = "0.1.0"

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
