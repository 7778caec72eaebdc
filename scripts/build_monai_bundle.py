#!/usr/bin/env python3
"""Build a small MONAI bundle for tests and demos: ``phantom_spleen_ct_segmentation``, laid out
and configured the way MONAI's model zoo publishes a CT segmentation bundle (configs/metadata.json,
configs/inference.json with network_def, preprocessing, inferer, postprocessing, evaluator;
models/model.pt), with weights trained briefly here on synthetic phantoms (ai/phantom.py: the
spleen label). NOT FOR CLINICAL USE: it has seen phantoms only, for a few minutes.

The bundle is a build product, written under the git-ignored .cache/models/ and rebuilt only
when this script changes. Its inference.json runs as it is under MONAI's own workflow
(``python -m monai.bundle run --config_file configs/inference.json --dataset_dir DIR``), which is
what the node's result is compared with.

    .venv/bin/python scripts/build_monai_bundle.py [--out .cache/models/phantom-spleen-bundle] [--steps 150]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai.phantom import SPLEEN, make_phantom  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAMP = "source.sha256"
ROI = [64, 64, 64]

METADATA = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
    "version": "0.1.0",
    "name": "phantom_spleen_ct_segmentation",
    "task": "Spleen segmentation in synthetic CT phantoms",
    "description": "A small 3-D UNet trained for a few minutes on dicom-node's synthetic CT phantoms; "
                   "for testing the node's MONAI bundle pipelines. NOT FOR CLINICAL USE.",
    "authors": "dicom-node",
    "copyright": "dicom-node, Apache-2.0",
    "data_source": "ai/phantom.py (synthetic, portal-venous HU)",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                             "spatial_shape": ROI, "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                             "channel_def": {"0": "image"}}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2, "spatial_shape": ROI,
                             "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                             "channel_def": {"0": "background", "1": "spleen"}}},
    },
}

PREPROCESSING = [
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.0], "mode": "bilinear"},
    {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": True},
    {"_target_": "EnsureTyped", "keys": "image"},
]

INFERENCE = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "$@bundle_root + '/data'",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                    "channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1, "norm": "batch"},
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": PREPROCESSING},
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ROI, "sw_batch_size": 2, "overlap": 0.25},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": ".nii.gz",
         "output_dtype": "$numpy.float32", "output_postfix": "trans", "separate_folder": True},
    ]},
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                  "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing", "amp": False},
    "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                         "load_dict": {"model": "@network"}},
    "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
    "run": ["$@evaluator.run()"],
}


def default_folder() -> Path:
    return REPO / ".cache" / "models" / "phantom-spleen-bundle"


def _digest(steps: int) -> str:
    return hashlib.sha256(Path(__file__).read_bytes() + str(steps).encode()).hexdigest()


def train(folder: Path, steps: int, seed: int = 0) -> dict[str, float]:
    """Train the bundle's own network_def on its own preprocessing of phantoms."""
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.losses import DiceCELoss
    from monai.transforms import Compose

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network_def")
    transforms = parser.get_parsed_content("preprocessing").transforms
    prepare = Compose([t for t in transforms if type(t).__name__ != "LoadImaged"])
    # The label takes the same geometry (orientation, spacing), not the intensity scaling.
    geometry = Compose([t for t in transforms if type(t).__name__ in ("EnsureChannelFirstd", "Orientationd", "Spacingd")])
    images, targets = [], []
    for number in range(6):
        phantom = make_phantom(2000 + number, shape=(96, 128, 128), spacing=(2.0, 2.0, 2.0), liver_lesions=(0, 0),
                               lung_nodules=(0, 0))
        affine = torch.as_tensor(phantom.volume.ras_affine(), dtype=torch.float64)
        pair = {}
        for key, array in (("image", phantom.volume.voxels), ("label", (phantom.labels == SPLEEN).astype(np.float32))):
            tensor = MetaTensor(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 1, 0))), affine=affine,
                                meta={"original_channel_dim": "no_channel", "space": "RAS"})
            pair[key] = (prepare if key == "image" else geometry)({"image": tensor})["image"]
        images.append(pair["image"].as_tensor())
        targets.append((pair["label"].as_tensor() > 0.5).float())
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(network.parameters(), lr=2e-3)
    network.train()
    started, losses = time.perf_counter(), []
    for _ in range(steps):
        batch_x, batch_y = [], []
        for _ in range(2):
            n = int(rng.integers(len(images)))
            image, target = images[n], targets[n]
            spleen = torch.nonzero(target[0])
            centre = spleen[int(rng.integers(len(spleen)))].numpy() if rng.random() < 0.7 and len(spleen) else \
                np.asarray([int(rng.integers(s)) for s in image.shape[1:]])
            start = [int(np.clip(c - r // 2, 0, s - r)) for c, r, s in zip(centre, ROI, image.shape[1:])]
            region = (slice(None), *(slice(a, a + r) for a, r in zip(start, ROI)))
            batch_x.append(image[region])
            batch_y.append(target[region])
        prediction = network(torch.stack(batch_x))
        loss = loss_fn(prediction, torch.stack(batch_y))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    network.eval()
    (folder / "models").mkdir(exist_ok=True)
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return {"steps": steps, "seconds": time.perf_counter() - started, "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:]))}


def build(out: Path | None = None, steps: int = 150) -> Path:
    """The bundle folder (built unless up to date)."""
    folder = out or default_folder()
    digest = _digest(steps)
    if (folder / STAMP).exists() and (folder / STAMP).read_text().strip() == digest and (folder / "models" / "model.pt").exists():
        return folder
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=4))
    (folder / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = train(folder, steps)
    (folder / "training.json").write_text(json.dumps(record, indent=2))
    (folder / STAMP).write_text(digest + "\n")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    folder = build(args.out, args.steps)
    print(f"{folder}: {json.loads((folder / 'training.json').read_text())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
