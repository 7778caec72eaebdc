"""Inference: device choice, sliding-window prediction with overlap blending, batched patches.

The device is chosen by itself (CUDA when torch sees one, else CPU); on CUDA the model runs
under float16 autocast. Patches overlap and are blended with a Gaussian weight (centre voxels
count more than edge voxels, which see less context), so the seams do not show.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Callable

import numpy as np
import torch


def select_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else CPU; ``cpu`` / ``cuda`` to force one."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA was asked for but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def release_free_memory() -> None:
    """Give freed heap memory back to the operating system (glibc's ``malloc_trim``).

    Inference frees hundreds of MB of activations, but glibc keeps them in the per-thread
    arenas of the worker threads, so the process's resident size stays at its peak for the
    rest of the analysis. A no-op where the C library has no ``malloc_trim``."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _gaussian_weight(patch: tuple[int, int, int]) -> np.ndarray:
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n / 8)) ** 2) for n in patch]
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(weight / weight.max(), 1e-3).astype(np.float32)


def _starts(size: int, patch: int, step: int) -> list[int]:
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def sliding_window(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    classes: int,
    patch: tuple[int, int, int] = (96, 96, 96),
    overlap: float = 0.25,
    batch_size: int = 2,
    device: torch.device | None = None,
    multiple: int = 8,
) -> np.ndarray:
    """Class probabilities (classes, D, H, W) for a (D, H, W) image.

    The image is padded (edge values) so every axis is at least the patch and a multiple of
    ``multiple`` (the network's downsampling); the result is cropped back to the image's shape.
    """
    device = device or select_device()
    shape = np.asarray(image.shape)
    patch_arr = np.minimum(np.asarray(patch), np.ceil(shape / multiple).astype(int) * multiple)
    padded_shape = np.maximum(shape, patch_arr)
    padded_shape = (np.ceil(padded_shape / multiple) * multiple).astype(int)
    pad = [(0, int(p - s)) for p, s in zip(padded_shape, shape)]
    data = np.pad(image.astype(np.float32), pad, mode="edge")
    p = tuple(int(x) for x in patch_arr)
    steps = [max(1, int(round(n * (1 - overlap)))) for n in p]
    corners = list(itertools.product(*(_starts(int(s), n, st) for s, n, st in zip(padded_shape, p, steps))))
    weight = _gaussian_weight(p)
    weight_t = torch.from_numpy(weight).to(device)
    accumulated = torch.zeros((classes, *[int(s) for s in padded_shape]), dtype=torch.float32, device=device)
    normaliser = torch.zeros(tuple(int(s) for s in padded_shape), dtype=torch.float32, device=device)
    use_amp = device.type == "cuda"
    with torch.inference_mode():
        for first in range(0, len(corners), batch_size):
            batch_corners = corners[first:first + batch_size]
            batch = np.stack([data[c[0]:c[0] + p[0], c[1]:c[1] + p[1], c[2]:c[2] + p[2]] for c in batch_corners])[:, None]
            tensor = torch.from_numpy(batch).to(device)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                logits = model(tensor)
            probs = torch.softmax(logits.float(), dim=1)
            for c, prob in zip(batch_corners, probs):
                region = (slice(c[0], c[0] + p[0]), slice(c[1], c[1] + p[1]), slice(c[2], c[2] + p[2]))
                accumulated[(slice(None), *region)] += prob * weight_t
                normaliser[region] += weight_t
    accumulated /= normaliser  # in place: a second (classes, D, H, W) array would double the peak
    del normaliser, data
    result = accumulated.cpu().numpy()
    release_free_memory()
    return result[:, : shape[0], : shape[1], : shape[2]]
