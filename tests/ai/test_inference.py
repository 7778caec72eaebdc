from __future__ import annotations

import numpy as np
import torch

from ai.inference import select_device, sliding_window


class _Echo(torch.nn.Module):
    """A 'model' whose class-1 logit is the input: lets us check blending and alignment."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x * 10], dim=1)


def test_device_falls_back_to_cpu() -> None:
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"


def test_sliding_window_output_is_aligned_with_input() -> None:
    image = np.zeros((37, 50, 29), np.float32)
    image[10:20, 5:30, 3:9] = 1.0
    image[30:, 40:, 20:] = -1.0
    probs = sliding_window(_Echo(), image, classes=2, patch=(16, 16, 16), overlap=0.5, batch_size=3, device=torch.device("cpu"))
    assert probs.shape == (2, 37, 50, 29)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    predicted = probs.argmax(axis=0)
    assert np.array_equal(predicted == 1, image > 0)  # blending never moves a boundary


def test_small_image_smaller_than_patch() -> None:
    image = np.ones((5, 6, 7), np.float32)
    probs = sliding_window(_Echo(), image, classes=2, patch=(96, 96, 96), device=torch.device("cpu"))
    assert probs.shape == (2, 5, 6, 7) and (probs.argmax(axis=0) == 1).all()
