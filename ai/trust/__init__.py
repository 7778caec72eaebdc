"""Trust: what a model may be run on (``domain``), the gate that holds a series against it
(``gate``), and the statistics that say how far a scan lies from the training data
(``features``)."""

from __future__ import annotations

from .domain import Domain, IntensityReference, TrainingData
from .gate import GateDecision, GateFacts, check

__all__ = ["Domain", "GateDecision", "IntensityReference", "GateFacts", "TrainingData", "check"]
