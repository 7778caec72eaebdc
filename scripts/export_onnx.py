#!/usr/bin/env python3
"""Export a shipped TorchScript model (our UNet3D) to ONNX, as a card folder the node loads
with ``pipelines.<name>: {kind: model, path: FOLDER}``.

The card is the original's with ``format: onnx`` and ``weights: model.onnx``: the same labels,
pre-processing, domain and output checks, so the two must give the same label maps (the test
and the pipeline benchmark compare them). Batch and spatial axes are dynamic, so the sliding
window's patch size and batch size stay the card's. The folder is a build product (by default
under the git-ignored .cache/models/), rebuilt only when the source weights or card change.

    .venv/bin/python scripts/export_onnx.py [--model ct-organs] [--out .cache/models/ct-organs-onnx]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import warnings
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai.registry import ModelCard, ModelRegistry  # noqa: E402
from ai.unet import UNet3D  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAMP = "source.sha256"


def default_folder(model: str) -> Path:
    return REPO / ".cache" / "models" / f"{model}-onnx"


def _source_digest(card: ModelCard) -> str:
    digest = hashlib.sha256()
    for path in (card.folder / "card.yaml", card.weights_path):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def unet_from_torchscript(card: ModelCard) -> UNet3D:
    """The UNet3D with the TorchScript file's weights (its feature widths read off the weights)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        scripted = torch.jit.load(str(card.weights_path), map_location="cpu")
    state = scripted.state_dict()
    features = tuple(int(v.shape[0]) for k, v in state.items() if k.startswith("down.") and k.endswith("body.0.weight"))
    net = UNet3D(1, card.classes, features)
    net.load_state_dict(state)
    return net.eval()


def export(model: str = "ct-organs", out: Path | None = None) -> Path:
    """The ONNX card folder for ``model`` (built unless up to date); returns the folder."""
    card = ModelRegistry().get(model)
    out = out or default_folder(model)
    digest = _source_digest(card)
    if (out / STAMP).exists() and (out / STAMP).read_text().strip() == digest and (out / "model.onnx").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    net = unet_from_torchscript(card)
    patch = card.data.inference.patch_size
    example = torch.zeros((2, 1, *patch), dtype=torch.float32)
    spatial = torch.export.Dim.DYNAMIC
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(out / "model.onnx"), dynamo=True, external_data=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", max=256), 2: spatial, 3: spatial, 4: spatial}})
    raw = yaml.safe_load((card.folder / "card.yaml").read_text(encoding="utf-8"))
    raw["format"] = "onnx"
    raw["weights"] = "model.onnx"
    raw.setdefault("training", {})["export"] = (f"scripts/export_onnx.py from {card.name} {card.version} "
                                                f"({card.weights_path.name}, sha256 of card and weights {digest[:16]})")
    (out / "card.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    (out / STAMP).write_text(digest + "\n")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ct-organs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    folder = export(args.model, args.out)
    print(f"{folder}: card.yaml + model.onnx ({(folder / 'model.onnx').stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
