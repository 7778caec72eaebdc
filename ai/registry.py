"""Model cards and the model registry.

A model is a folder with ``card.yaml`` (validated here: a bad card names the key and the rule)
and its weights. Loaders are chosen by the card's ``format``: ``torchscript`` is built in,
``onnx`` runs on onnxruntime (an optional extra); another format plugs in by adding a loader to
``LOADERS`` without touching callers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .trust.domain import Domain
from .trust.output_check import StructureRule
from .types import LabelInfo

BUILTIN_MODELS = Path(__file__).parent / "models"


class ModelCardError(ValueError):
    """A model card is missing, unreadable or invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSpec(_Strict):
    value: int = Field(ge=1, le=255)
    name: str = Field(min_length=1)
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    color: tuple[int, int, int] = (255, 0, 0)
    lesion: bool = False

    @field_validator("category", "type", mode="before")
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:
        return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else value


class InferenceSpec(_Strict):
    patch_size: tuple[int, int, int] = (96, 96, 96)
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    batch_size: int = Field(2, ge=1)
    crop_to_body: dict[str, float] | None = None


class HostSpec(_Strict):
    """A lesion label's host organ: ``min_fraction`` of each component's border must be it."""

    label: int
    min_fraction: float = Field(0.5, gt=0.0, le=1.0)


class PostprocessSpec(_Strict):
    min_component_ml: dict[int, float] = {}
    fill_holes: list[int] = []
    keep_largest: list[int] = []
    host: dict[int, HostSpec] = {}


class ClassificationSpec(_Strict):
    name: str
    label: int
    threshold: float = Field(ge=0.0, le=1.0)
    #: The finding stands only when this organ is reported with at least this confidence.
    host_label: int | None = None
    host_min_confidence: float = Field(0.0, ge=0.0, le=1.0)


class ModelCardData(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: str
    task: Literal["segmentation", "classification"]
    modality: str
    format: str = "torchscript"
    weights: str = "model.ts"
    description: str = ""
    intended_use: str
    limitations: str
    training: dict[str, str] = {}
    preprocessing: list[dict[str, Any]] = []
    inference: InferenceSpec = InferenceSpec()
    postprocessing: PostprocessSpec = PostprocessSpec()
    classification: list[ClassificationSpec] = []
    labels: list[LabelSpec] = Field(min_length=1)
    #: What the model may be run on (ai/trust/domain.py); the gate holds every series against it.
    domain: Domain
    #: Per structure name: confidence and plausibility rules (ai/trust/output_check.py).
    output_checks: dict[str, StructureRule] = {}


@dataclass(frozen=True)
class ModelCard:
    """A validated card and the folder it lives in."""

    data: ModelCardData
    folder: Path

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def version(self) -> str:
        return self.data.version

    @property
    def weights_path(self) -> Path:
        return self.folder / self.data.weights

    @property
    def classes(self) -> int:
        return 1 + max(label.value for label in self.data.labels)

    def label_infos(self) -> tuple[LabelInfo, ...]:
        return tuple(LabelInfo(l.value, l.name, l.category, l.type, l.color, l.lesion) for l in self.data.labels)

    @classmethod
    def from_folder(cls, folder: Path) -> ModelCard:
        path = folder / "card.yaml"
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelCardError(f"{path}: no model card") from None
        except yaml.YAMLError as exc:
            raise ModelCardError(f"{path}: not valid YAML: {exc}") from None
        try:
            data = ModelCardData.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ModelCardError(f"{path}: {problems}") from None
        return cls(data, folder)


def _load_torchscript(card: ModelCard, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=DeprecationWarning)
        model = torch.jit.load(str(card.weights_path), map_location=device)
        model.eval()
        # Frozen: weights become constants and batch norm folds into the convolutions, which
        # saves a copy of every intermediate (about 90 MB at a 96^3 patch) at the same speed.
        model = torch.jit.freeze(model)
    return model  # type: ignore[no-any-return]


def _load_onnx(card: ModelCard, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    from .adapters.onnx import OnnxModel, OnnxRuntimeMissing

    try:
        return OnnxModel(card.weights_path, device)
    except OnnxRuntimeMissing as exc:
        raise ModelCardError(f"{card.folder / 'card.yaml'}: {exc}") from None


#: format -> loader(card, device) returning a callable from an input batch to logits.
LOADERS: dict[str, Callable[[ModelCard, torch.device], Callable[[torch.Tensor], torch.Tensor]]] = {
    "torchscript": _load_torchscript,
    "onnx": _load_onnx,
}

#: format -> (module it needs, how to install it): checked when the node starts.
FORMAT_REQUIREMENTS: dict[str, tuple[str, str]] = {
    "onnx": ("onnxruntime", "pip install 'dicom-node[onnx]'"),
}


def load_model(card: ModelCard, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    loader = LOADERS.get(card.data.format)
    if loader is None:
        raise ModelCardError(f"{card.folder / 'card.yaml'}: format: no loader for {card.data.format!r} "
                             f"(available: {', '.join(sorted(LOADERS))})")
    if not card.weights_path.exists():
        raise ModelCardError(f"{card.folder / 'card.yaml'}: weights: {card.weights_path} does not exist")
    return loader(card, device)


class ModelRegistry:
    """The models installed under some folders (the built-in ones first)."""

    def __init__(self, roots: list[Path] | None = None) -> None:
        self.roots = [BUILTIN_MODELS, *(roots or [])]

    def cards(self) -> list[ModelCard]:
        found: dict[str, ModelCard] = {}
        for root in self.roots:
            if not root.is_dir():
                continue
            for folder in sorted(p for p in root.iterdir() if (p / "card.yaml").exists()):
                card = ModelCard.from_folder(folder)
                found[card.name] = card
        return list(found.values())

    def get(self, name: str) -> ModelCard:
        for card in self.cards():
            if card.name == name:
                return card
        known = ", ".join(c.name for c in self.cards()) or "none"
        raise ModelCardError(f"no model named {name!r} (installed: {known})")
