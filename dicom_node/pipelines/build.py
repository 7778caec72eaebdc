"""The configured pipelines as objects: built from ``pipelines:`` in the configuration, checked
when the node starts, and described for ``dicom-node models``.

A ``model`` pipeline names a model from the registry (``model: ct-organs``) or a card folder
anywhere (``path: /opt/models/liver-onnx``): a site's own model is a folder with a card and
its weights, not code. Start-up checks what can be checked without running anything: the card
is valid, its weights exist, and the runtime its format needs is installed (a missing extra
fails the start with the ``pip install`` line), so a mistake shows when the node starts, not on
the first patient's series.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

from ai.trust.domain import Domain
from ai.types import Findings, Volume

from ..config import NodeConfig, PipelineSpec
from ..errors import PipelineError


class Pipeline(Protocol):
    name: str
    version: str
    domain: Domain  # where it may run: the gate (ai/trust/gate.py) holds every series against it

    def run(self, volume: Volume) -> Findings: ...


def model_card(spec: PipelineSpec) -> Any:
    """The ModelCard of a ``model`` pipeline: from ``path`` when given, else by name."""
    from ai.registry import ModelCard, ModelCardError, ModelRegistry

    try:
        if spec.path is not None:
            return ModelCard.from_folder(Path(spec.path))
        return ModelRegistry().get(str(spec.model))
    except ModelCardError as exc:
        raise PipelineError(str(exc)) from None


def build_pipeline(spec: PipelineSpec, uncertainty: bool = False, name: str = "pipeline",
                   work_root: Path | None = None) -> Pipeline:
    """A pipeline object from its configuration (the model loads on first use); with
    ``uncertainty``, a model pipeline also gives its per-voxel uncertainty. ``name`` is the
    pipeline's key in the configuration; ``work_root`` holds a command's work folders."""
    from ai.pipeline import ClassicalCTPipeline, SegmentationPipeline

    if spec.kind == "classical":
        return ClassicalCTPipeline()
    if spec.kind == "monai-bundle":
        from ai.adapters.monai_bundle import BundleError, MonaiBundlePipeline, bundle_modality
        from ai.trust.domain import Domain

        domain = dict(spec.domain or {})
        if not domain.get("modality"):  # the bundle's metadata names its modality: the domain starts there
            named = bundle_modality(Path(str(spec.path)))
            if named is None:
                raise PipelineError(f"pipelines.{name}: give domain.modality (the bundle's metadata.json names no "
                                    "network_data_format.inputs.image.modality)")
            domain["modality"] = [named]
        try:
            return MonaiBundlePipeline(Path(str(spec.path)), Domain.model_validate(domain), spec.label_codes(),
                                       device=spec.device)  # type: ignore[return-value]
        except (BundleError, ValueError, RuntimeError) as exc:
            raise PipelineError(f"pipelines.{name}: {exc}") from None
    if spec.kind == "nnunet":
        from ai.adapters.nnunet import NnUNetModelError, NnUNetPipeline
        from ai.trust.domain import Domain

        try:
            return NnUNetPipeline(Path(str(spec.path)), Domain.model_validate(spec.domain), spec.label_codes(),
                                  folds=tuple(spec.folds), checkpoint=spec.checkpoint, device=spec.device,
                                  mirroring=spec.mirroring, orientation=spec.orientation, name=spec.name,
                                  version=None if spec.version == "unknown" else spec.version)  # type: ignore[return-value]
        except (NnUNetModelError, ValueError, RuntimeError, OSError) as exc:
            raise PipelineError(f"pipelines.{name}: {exc}") from None
    if spec.kind == "command":
        from .command import CommandPipeline

        try:
            return CommandPipeline(name, spec, work_root)  # type: ignore[return-value]
        except ValueError as exc:  # a domain that does not validate
            raise PipelineError(f"pipelines.{name}: {exc}") from None
    try:
        return SegmentationPipeline(model_card(spec), device=spec.device, uncertainty=uncertainty)
    except (ValueError, RuntimeError) as exc:  # a classification card, CUDA asked for and absent
        raise PipelineError(str(exc)) from None


def pipeline_problems(config: NodeConfig) -> list[str]:
    """What stops each configured pipeline from running, one line each (empty: all can)."""
    from ai.registry import FORMAT_REQUIREMENTS, LOADERS

    problems = []
    for name, spec in config.pipelines.items():
        if spec.kind == "command":
            problems.extend(_command_problems(name, spec))
            continue
        if spec.kind == "monai-bundle":
            problems.extend(_bundle_problems(name, spec))
            continue
        if spec.kind == "nnunet":
            if importlib.util.find_spec("nnunetv2") is None:
                problems.append(f"pipelines.{name}: kind nnunet needs the Python package nnunetv2: pip install 'dicom-node[nnunet]'")
                continue
            try:
                build_pipeline(spec, name=name)
            except PipelineError as exc:
                problems.append(str(exc))
            continue
        if spec.kind != "model":
            continue
        try:
            card = model_card(spec)
        except PipelineError as exc:
            problems.append(f"pipelines.{name}: {exc}")
            continue
        where = f"pipelines.{name} ({card.folder / 'card.yaml'})"
        if card.data.task != "segmentation":
            problems.append(f"{where}: a {card.data.task} model; a pipeline runs segmentation models")
        if card.data.format not in LOADERS:
            problems.append(f"{where}: format {card.data.format!r} has no loader (known: {', '.join(sorted(LOADERS))})")
            continue
        module, install = FORMAT_REQUIREMENTS.get(card.data.format, (None, ""))
        if module is not None and importlib.util.find_spec(module) is None:
            problems.append(f"{where}: format {card.data.format} needs the Python package {module}: {install}")
        if not card.weights_path.exists():
            problems.append(f"{where}: weights {card.weights_path} do not exist")
    return problems


def _bundle_problems(name: str, spec: PipelineSpec) -> list[str]:
    if importlib.util.find_spec("monai") is None:
        return [f"pipelines.{name}: kind monai-bundle needs the Python package monai: pip install 'dicom-node[monai]'"]
    try:
        pipeline = build_pipeline(spec, name=name)
        pipeline.weights()  # type: ignore[attr-defined]
    except PipelineError as exc:
        return [str(exc)]
    except ValueError as exc:  # BundleError: no weights
        return [f"pipelines.{name}: {exc}"]
    return []


def _command_problems(name: str, spec: PipelineSpec) -> list[str]:
    import shutil

    problems = []
    try:
        build_pipeline(spec, name=name)
    except PipelineError as exc:
        problems.append(str(exc))
    program = spec.command[0] if spec.command else ""
    if program and shutil.which(program) is None:
        problems.append(f"pipelines.{name}: command {program!r} is not an executable on PATH or a path to one")
    if importlib.util.find_spec("nibabel") is None:
        problems.append(f"pipelines.{name}: reading a module's NIfTI label map needs nibabel: pip install nibabel")
    return problems


def describe(name: str, spec: PipelineSpec) -> dict[str, Any]:
    """What ``dicom-node models`` shows of a configured pipeline."""
    from ai.pipeline import BASELINE_LABELS, ClassicalCTPipeline

    if spec.kind == "classical":
        return {"pipeline": name, "kind": "classical", "model": ClassicalCTPipeline.name,
                "version": ClassicalCTPipeline.version, "format": "rules",
                "labels": [info.name for info in BASELINE_LABELS], "source": "ai/pipeline.py (built in)"}
    if spec.kind in ("nnunet", "monai-bundle"):  # the labels are in the model folder: read them
        try:
            model = build_pipeline(spec, name=name)
        except PipelineError as exc:
            return {"pipeline": name, "kind": spec.kind, "model": "", "version": "", "format": spec.kind,
                    "labels": [], "source": str(spec.path), "error": str(exc)}
        return {"pipeline": name, "kind": spec.kind, "model": model.name, "version": model.version, "format": spec.kind,
                "labels": [info.name for info in model.labels], "source": str(spec.path)}  # type: ignore[attr-defined]
    if spec.kind == "command":
        return {"pipeline": name, "kind": "command", "model": spec.name or name, "version": spec.version,
                "format": "command", "labels": sorted(spec.codes), "source": " ".join(spec.command)}
    row: dict[str, Any] = {"pipeline": name, "kind": spec.kind, "model": spec.model or "", "version": "", "format": "",
                           "labels": [], "source": str(spec.path) if spec.path else "registry"}
    try:
        card = model_card(spec)
    except PipelineError as exc:
        row["error"] = str(exc)
        return row
    row.update(model=card.name, version=card.version, format=card.data.format,
               labels=[label.name for label in card.data.labels], source=str(card.folder))
    return row
