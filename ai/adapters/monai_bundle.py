"""MONAI bundles (``kind: monai-bundle``): a bundle folder as MONAI's model zoo publishes it
(``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt`` or ``model.ts``) runs
unchanged: its network, preprocessing, inferer and postprocessing come from its own
configuration through ``monai.bundle.ConfigParser``.

What the node changes, as MONAI Deploy's bundle operator does: the image-loading and
image-saving transforms are left out, and the Volume is handed over as a MONAI ``MetaTensor``
with its affine, exactly as ``LoadImaged`` would give it for a NIfTI of the same voxels (the
array in (i, j, k) order, the affine in RAS), so the bundle's own ``Orientationd``/``Spacingd``
and its ``Invertd`` bring the prediction back onto the input's grid. Label names come from
``network_data_format.outputs.pred.channel_def``; their codes from the pipeline's ``codes:``
(name -> category and type), else a generic "Tissue" code, keeping the name.

A bundle's configuration is code (MONAI imports every ``_target_`` and evaluates every ``$``
expression): the node logs that once per bundle, and a site runs only bundles it trusts.
MONAI is an optional dependency: ``pip install 'dicom-node[monai]'``.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..digest import file_digest
from ..inference import select_device
from ..measure import measure_all
from ..trust.domain import Domain
from ..types import Findings, LabelInfo, Volume, external_label

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'dicom-node[monai]'"
#: Transforms that touch files: a bundle reads and writes images itself; here the node does.
FILE_TRANSFORMS = ("LoadImage", "LoadImaged", "SaveImage", "SaveImaged")


class BundleError(ValueError):
    """A bundle folder that cannot run here: the message names the file and what is wrong."""


@contextmanager
def _quiet_monai() -> Iterator[None]:
    """MONAI's deprecation notices (arguments whose defaults move) are not the site's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"monai(\..*)?")
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def import_monai() -> Any:
    try:
        return importlib.import_module("monai.bundle")
    except ImportError as exc:
        raise BundleError(f"a MONAI bundle needs MONAI, which is not installed: {INSTALL_HINT}") from exc


def bundle_modality(folder: Path) -> str | None:
    """The modality the bundle's metadata gives its image input
    (``network_data_format.inputs.image.modality``), None when it names none."""
    try:
        metadata = json.loads((Path(folder) / "configs" / "metadata.json").read_text())
        modality = metadata["network_data_format"]["inputs"]["image"]["modality"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(modality).strip().upper() or None if isinstance(modality, str) else None


def bundle_labels(metadata: Mapping[str, Any], codes: Mapping[str, tuple[tuple[str, str, str], tuple[str, str, str]]]
                  ) -> tuple[LabelInfo, ...]:
    """LabelInfo for each non-background channel of the bundle's ``pred`` output."""
    try:
        channels = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    except (KeyError, TypeError):
        raise BundleError("metadata.json: network_data_format.outputs.pred.channel_def is missing") from None
    infos = []
    for number, (key, name) in enumerate(sorted(channels.items(), key=lambda item: int(item[0]))):
        value = int(key)
        if value == 0:
            continue
        if not 1 <= value <= 255:
            raise BundleError(f"metadata.json: channel {value} outside 1-255")
        infos.append(external_label(value, str(name), number, dict(codes)))
    if not infos:
        raise BundleError("metadata.json: channel_def names no label besides the background")
    return tuple(infos)


class MonaiBundlePipeline:
    """A bundle folder run on Volumes; network and transforms are built on first use."""

    def __init__(self, folder: Path, domain: Domain, codes: Mapping[str, tuple[tuple[str, str, str], tuple[str, str, str]]]
                 | None = None, device: str = "auto") -> None:
        self.folder = Path(folder)
        self.domain = domain
        configs = self.folder / "configs"
        for required in ("metadata.json", "inference.json"):
            if not (configs / required).exists():
                raise BundleError(f"{configs / required}: missing (a MONAI bundle has configs/metadata.json and configs/inference.json)")
        try:
            self.metadata = json.loads((configs / "metadata.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"{configs / 'metadata.json'}: {exc}") from None
        self.name = str(self.metadata.get("name") or self.folder.name).replace(" ", "_")
        self.version = str(self.metadata.get("version", "unknown"))
        self.labels = bundle_labels(self.metadata, codes or {})
        self.device = select_device(device)
        self._parts: tuple[Any, Callable[..., Any], Any, Any] | None = None

    @property
    def weights_digest(self) -> str:
        return file_digest(self.weights())

    def weights(self) -> Path:
        for name in ("model.ts", "model.pt"):
            if (self.folder / "models" / name).exists():
                return self.folder / "models" / name
        raise BundleError(f"{self.folder / 'models'}: no model.pt or model.ts")

    def parts(self) -> tuple[Any, Callable[..., Any], Any, Any]:
        """(network, inferer, preprocessing, postprocessing) from the bundle's own config."""
        if self._parts is None:
            with _quiet_monai():
                bundle = import_monai()
                from monai.transforms import Compose

            log.warning("MONAI bundle %s: its configuration is code (every _target_ is imported and called, every "
                        "'$' expression evaluated); run only bundles from a source you trust", self.folder)
            with _quiet_monai():
                parser = bundle.ConfigParser()
                parser.read_meta(str(self.folder / "configs" / "metadata.json"))
                parser.read_config(str(self.folder / "configs" / "inference.json"))
                parser["bundle_root"] = str(self.folder)
                parser["device"] = f"$torch.device('{self.device}')"
                weights = self.weights()
                if weights.suffix == ".ts":
                    network = torch.jit.load(str(weights), map_location=self.device)
                else:
                    network = parser.get_parsed_content("network_def").to(self.device)
                    state = torch.load(str(weights), map_location=self.device, weights_only=True)
                    network.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
                network.eval()
                inferer = parser.get_parsed_content("inferer")
                pre = parser.get_parsed_content("preprocessing")
                post = parser.get_parsed_content("postprocessing")
                keep = lambda t: type(t).__name__ not in FILE_TRANSFORMS  # noqa: E731
                preprocessing = Compose([t for t in pre.transforms if keep(t)])
                # Invertd inverts "the preprocessing": it must be the same object we ran.
                for transform in post.transforms:
                    if type(transform).__name__ == "Invertd":
                        transform.transform = preprocessing
                postprocessing = Compose([t for t in post.transforms if keep(t)])
            self._parts = (network, inferer, preprocessing, postprocessing)
        return self._parts

    def run(self, volume: Volume) -> Findings:
        from monai.data import MetaTensor

        started = time.perf_counter()
        network, inferer, preprocessing, postprocessing = self.parts()
        affine = torch.as_tensor(volume.ras_affine(), dtype=torch.float64)
        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.voxels.transpose(2, 1, 0))), affine=affine,
                           meta={"original_channel_dim": "no_channel", "filename_or_obj": "dicom-node",
                                 "spatial_shape": np.asarray(volume.shape[::-1]), "original_affine": affine.numpy(),
                                 "space": "RAS"})
        with _quiet_monai(), torch.inference_mode():
            data = preprocessing({"image": image})
            batch = data["image"].unsqueeze(0).to(self.device)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
                data["pred"] = inferer(batch, network)[0].float().cpu()
            data["image"] = data["image"].cpu()
            data = postprocessing(data)
        prediction = data["pred"]
        array = prediction.detach().cpu().numpy() if hasattr(prediction, "detach") else np.asarray(prediction)
        if array.ndim == 4:
            array = array[0]
        if array.shape != volume.shape[::-1]:
            raise BundleError(f"{self.name}: the prediction's shape {array.shape} is not the input's {volume.shape[::-1]} "
                              "(the bundle's postprocessing must invert its resampling, e.g. with Invertd)")
        label_map = np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.uint8)
        measurements = measure_all(label_map, volume, self.labels)
        return Findings(label_map, self.labels, tuple(measurements), {}, {}, self.name, self.version,
                        extra={"timings": {"total": time.perf_counter() - started}, "device": str(self.device),
                               "bundle": str(self.folder)})
