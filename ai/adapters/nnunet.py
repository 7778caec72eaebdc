"""nnU-Net v2 models (``kind: nnunet``): a trained model folder as nnU-Net writes it
(``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final.pth``), run by nnU-Net's own
``nnUNetPredictor`` (its preprocessing, sliding window, mirroring and resampling back).

nnU-Net reads NIfTI training images with SimpleITK, whose arrays are (z, y, x) with the spacing
in the same order, and does not reorient: a model sees images in the orientation its training
files had. ``orientation`` says which:

* ``as-is``: the series' own axes, (k, j, i) with spacing (k, j, i), which is what a NIfTI
  written from the series without reorienting gives (scripts/build_nnunet_model.py trains so);
* ``ras``: the series brought to RAS+ first (nibabel's closest canonical), as tools that
  reorient their inputs before nnU-Net do (TotalSegmentator), and the label map brought back.

Labels and their values come from ``dataset.json`` (region-based training is not supported);
codes from the pipeline's ``codes:``, else a generic "Tissue" code. nnU-Net is an optional
dependency: ``pip install 'dicom-node[nnunet]'``.
"""

from __future__ import annotations

import importlib
import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..digest import files_digest
from ..inference import select_device
from ..measure import measure_all
from ..trust.domain import Domain
from ..types import Findings, LabelInfo, Volume, external_label

INSTALL_HINT = "pip install 'dicom-node[nnunet]'"

Codes = Mapping[str, tuple[tuple[str, str, str], tuple[str, str, str]]]


class NnUNetModelError(ValueError):
    """A model folder that cannot run here; the message names the file and what is wrong."""


def dataset_labels(dataset: Mapping[str, Any], codes: Codes) -> tuple[LabelInfo, ...]:
    """LabelInfo per non-background label of nnU-Net's dataset.json ``labels`` (name -> value)."""
    labels = dataset.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise NnUNetModelError("dataset.json: no labels")
    infos = []
    for number, (name, value) in enumerate(sorted(labels.items(), key=lambda item: str(item[1]))):
        if isinstance(value, (list, tuple)):
            raise NnUNetModelError(f"dataset.json: label {name!r} is a region ({value}); region-based models are not supported")
        if int(value) == 0:
            continue
        if not 1 <= int(value) <= 255:
            raise NnUNetModelError(f"dataset.json: label {name!r} = {value} outside 1-255")
        infos.append(external_label(int(value), str(name), number, dict(codes)))
    return tuple(sorted(infos, key=lambda info: info.value))


def to_ras(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """(voxels as SimpleITK would read a RAS+ NIfTI of them: (z, y, x); their spacing in that
    order; nibabel's orientation transform from the series' (i, j, k) to RAS+)."""
    import nibabel.orientations as orientations

    affine = volume.ras_affine()
    transform = orientations.io_orientation(affine)
    ras = orientations.apply_orientation(volume.voxels.transpose(2, 1, 0), transform)  # (x, y, z) in RAS+
    spacing_ijk = np.asarray(volume.spacing[::-1])
    spacing_xyz = spacing_ijk[transform[:, 0].astype(int).argsort()]
    return np.ascontiguousarray(ras.transpose(2, 1, 0)), tuple(float(s) for s in spacing_xyz[::-1]), transform


def from_ras(labels_zyx: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """A (z, y, x) RAS+ label map back on the series' (k, j, i) grid."""
    import nibabel.orientations as orientations

    back = orientations.ornt_transform(orientations.axcodes2ornt(("R", "A", "S")), transform)
    return np.ascontiguousarray(orientations.apply_orientation(labels_zyx.transpose(2, 1, 0), back).transpose(2, 1, 0))


class NnUNetPipeline:
    """A trained nnU-Net model folder run on Volumes; the predictor is built on first use."""

    def __init__(self, folder: Path, domain: Domain, codes: Codes | None = None, folds: tuple[int | str, ...] = (0,),
                 checkpoint: str = "checkpoint_final.pth", device: str = "auto", mirroring: bool = True,
                 orientation: Literal["as-is", "ras"] = "as-is", name: str | None = None, version: str | None = None) -> None:
        self.folder = Path(folder)
        self.domain = domain
        for required in ("dataset.json", "plans.json"):
            if not (self.folder / required).exists():
                raise NnUNetModelError(f"{self.folder / required}: missing (an nnU-Net model folder has dataset.json, "
                                       "plans.json and fold_N/)")
        for fold in folds:
            if not (self.folder / f"fold_{fold}" / checkpoint).exists():
                raise NnUNetModelError(f"{self.folder / f'fold_{fold}' / checkpoint}: missing")
        dataset = json.loads((self.folder / "dataset.json").read_text())
        self.labels = dataset_labels(dataset, codes or {})
        self.name = name or self.folder.parent.name
        self.version = version or f"{self.folder.name} folds {','.join(str(f) for f in folds)}"
        self.folds, self.checkpoint = tuple(folds), checkpoint
        self.device = select_device(device)
        self.mirroring, self.orientation = mirroring, orientation
        self._predictor: Any = None

    @property
    def weights_digest(self) -> str:
        return files_digest(self.folder / f"fold_{fold}" / self.checkpoint for fold in self.folds)

    @property
    def predictor(self) -> Any:
        if self._predictor is None:
            try:
                module = importlib.import_module("nnunetv2.inference.predict_from_raw_data")
            except ImportError as exc:
                raise NnUNetModelError(f"an nnU-Net model needs nnunetv2, which is not installed: {INSTALL_HINT}") from exc
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                predictor = module.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=self.mirroring,
                                                   perform_everything_on_device=self.device.type == "cuda",
                                                   device=self.device, verbose=False, allow_tqdm=False)
                predictor.initialize_from_trained_model_folder(str(self.folder), self.folds, self.checkpoint)
            self._predictor = predictor
        return self._predictor

    def run(self, volume: Volume) -> Findings:
        started = time.perf_counter()
        if self.orientation == "ras":
            image, spacing, transform = to_ras(volume)
        else:
            image, spacing, transform = volume.voxels, tuple(float(s) for s in volume.spacing), None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            segmentation = self.predictor.predict_single_npy_array(image[None].astype(np.float32), {"spacing": spacing},
                                                                   None, None, False)
        labels = np.asarray(segmentation)
        if transform is not None:
            labels = from_ras(labels, transform)
        if labels.shape != volume.shape:
            raise NnUNetModelError(f"{self.name}: prediction shape {labels.shape} is not the input's {volume.shape}")
        label_map = labels.astype(np.uint8)
        measurements = measure_all(label_map, volume, self.labels)
        return Findings(label_map, self.labels, tuple(measurements), {}, {}, self.name, self.version,
                        extra={"timings": {"total": time.perf_counter() - started}, "device": str(self.device),
                               "model_folder": str(self.folder)})
