"""Models in ONNX (card ``format: onnx``), run by onnxruntime.

A site's model exported from PyTorch, TensorFlow or a vendor's toolchain runs behind the same
card, pre-processing, sliding window, output checks and DICOM encoding as a TorchScript one:
the loader gives the sliding window the same callable, a batch of patches in, logits out.

onnxruntime is an optional dependency (``pip install 'dicom-node[onnx]'``): imported when an
ONNX card is loaded, and named in the error when it is missing. The execution provider follows
the pipeline's device: CUDA when the device is CUDA and onnxruntime has the CUDA provider
(the ``onnxruntime-gpu`` build), else the CPU.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

INSTALL_HINT = "pip install 'dicom-node[onnx]'"


class OnnxRuntimeMissing(ImportError):
    """onnxruntime is not installed; the message says how to install it."""


def import_onnxruntime() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise OnnxRuntimeMissing(f"an ONNX model needs onnxruntime, which is not installed: {INSTALL_HINT}") from exc


def providers_for(device: torch.device, available: list[str]) -> list[str]:
    """onnxruntime execution providers for a torch device, best first (CPU always last)."""
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An onnxruntime session called like a torch module: (N, C, D, H, W) float32 in, logits out
    on the input's device."""

    def __init__(self, path: Path, device: torch.device) -> None:
        ort = import_onnxruntime()
        self.providers = providers_for(device, list(ort.get_available_providers()))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=self.providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path}: an ONNX segmentation model takes one input, this one takes {len(inputs)}")
        self.input_name = inputs[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).numpy()
        logits = self.session.run(None, {self.input_name: np.ascontiguousarray(array)})[0]
        return torch.from_numpy(logits).to(batch.device)
