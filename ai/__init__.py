"""The numeric side of the node: preprocessing, models, inference, post-processing,
measurements, training and the CT phantom. Never imports pydicom or pynetdicom: a ``Volume``
comes in, ``Findings`` go out."""

from .pipeline import ClassicalCTPipeline, SegmentationPipeline
from .registry import ModelCard, ModelRegistry
from .types import Findings, LabelInfo, Measurement, Volume

__all__ = ["ClassicalCTPipeline", "Findings", "LabelInfo", "Measurement", "ModelCard", "ModelRegistry",
           "SegmentationPipeline", "Volume"]
