"""A small 3-D U-Net: enough capacity for the phantom organs and lesions, small enough to train
on a CPU within the hour and to ship as a few-MB TorchScript file.

Batch normalisation: CT intensities are absolute (HU), and per-sample normalisation (instance
or group norm) erases exactly that (air and lung, or spleen and muscle, then look alike in a
patch of one tissue). Training batches of two patches give running statistics that do not
match inference, so the statistics are recomputed over many large patches and frozen for the
last part of training (training.py), which then fits the network to exactly the normalisation
inference uses.

``norm="none"`` (no normalisation layers, biased convolutions) is kept for experiments: trained
the same way on the phantoms it confused lung with the air around the body (lung Dice 0.2
after 2000 steps), as dark inputs leave most first-layer units on LeakyReLU's flat side."""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r} (batch or none)")


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.body = nn.Sequential(
            nn.Conv3d(cin, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UNet3D(nn.Module):
    """Encoder-decoder with skip connections; input (N, C, D, H, W) with D, H, W multiples of
    2**(len(features)-1); output logits (N, classes, D, H, W)."""

    def __init__(self, in_channels: int = 1, classes: int = 8, features: tuple[int, ...] = (8, 16, 32, 64),
                 norm: str = "batch") -> None:
        super().__init__()
        self.features = features
        self.down = nn.ModuleList()
        cin = in_channels
        for f in features:
            self.down.append(_Block(cin, f, norm))
            cin = f
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for f_low, f_high in zip(features[::-1][:-1], features[::-1][1:]):
            self.up.append(nn.ConvTranspose3d(f_low, f_high, 2, stride=2))
            self.merge.append(_Block(2 * f_high, f_high, norm))
        self.head = nn.Conv3d(features[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, merge, skip in zip(self.up, self.merge, skips[::-1]):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
