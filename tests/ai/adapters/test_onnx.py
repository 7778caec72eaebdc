"""ONNX models: ct-organs exported by scripts/export_onnx.py (into the git-ignored .cache) gives
the TorchScript model's label maps; the execution provider follows the device; a missing
onnxruntime is named with the install line."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from ai.adapters.onnx import INSTALL_HINT, providers_for
from ai.phantom import make_phantom
from ai.pipeline import SegmentationPipeline
from ai.registry import ModelCard, ModelCardError, ModelRegistry, load_model


@pytest.fixture(scope="module")
def onnx_card() -> ModelCard:
    from scripts.export_onnx import export

    return ModelCard.from_folder(export("ct-organs"))


def test_the_exported_card_is_the_original_with_another_format(onnx_card: ModelCard) -> None:
    original = ModelRegistry().get("ct-organs")
    assert (onnx_card.data.format, onnx_card.weights_path.name) == ("onnx", "model.onnx")
    assert onnx_card.data.labels == original.data.labels and onnx_card.data.domain == original.data.domain
    assert onnx_card.data.preprocessing == original.data.preprocessing
    assert "export_onnx.py" in onnx_card.data.training["export"]


@pytest.mark.slow
def test_onnx_gives_the_torchscript_label_maps(onnx_card: ModelCard) -> None:
    """Three held-out phantoms: at least 99.9 % of voxels equal (float differences of the two
    runtimes may flip a voxel where two classes tie)."""
    scripted = SegmentationPipeline(ModelRegistry().get("ct-organs"), device="cpu")
    onnx = SegmentationPipeline(onnx_card, device="cpu")
    for seed in (9101, 9102, 9103):
        phantom = make_phantom(seed, shape=(48, 128, 128), spacing=(2.5, 2.0, 2.0), liver_lesions=(1, 1), lung_nodules=(1, 1))
        a, b = scripted.run(phantom.volume), onnx.run(phantom.volume)
        equal = float((a.label_map == b.label_map).mean())
        assert equal >= 0.999, (seed, equal)
        assert a.findings == b.findings
        assert a.extra["confidence"].keys() == b.extra["confidence"].keys()


def test_logits_match_on_odd_patch_shapes(onnx_card: ModelCard) -> None:
    """Spatial axes are dynamic: any multiple of 8, any batch."""
    scripted = load_model(ModelRegistry().get("ct-organs"), torch.device("cpu"))
    onnx = load_model(onnx_card, torch.device("cpu"))
    for shape in ((1, 1, 16, 40, 24), (3, 1, 48, 48, 48)):
        batch = torch.randn(shape)
        with torch.inference_mode():
            difference = (scripted(batch) - onnx(batch)).abs().max().item()
        assert difference < 1e-3, (shape, difference)


def test_the_provider_follows_the_device() -> None:
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for(torch.device("cuda"), both) == both
    assert providers_for(torch.device("cpu"), both) == ["CPUExecutionProvider"]
    assert providers_for(torch.device("cuda"), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_a_missing_onnxruntime_is_named_with_the_install_line(onnx_card: ModelCard, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def without_onnxruntime(name: str, *args: object) -> object:
        if name == "onnxruntime":
            raise ModuleNotFoundError("No module named 'onnxruntime'")
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib, "import_module", without_onnxruntime)
    with pytest.raises(ModelCardError) as info:
        load_model(onnx_card, torch.device("cpu"))
    assert INSTALL_HINT in str(info.value) and str(Path(onnx_card.folder)) in str(info.value)
