#!/usr/bin/env python3
"""Build a small nnU-Net v2 model with nnU-Net's own tools, for tests: phantoms (ai/phantom.py:
liver and spleen labels) as an nnU-Net raw dataset, ``nnUNetv2_plan_and_preprocess``, then
nnU-Net's own default ``nnUNetTrainer`` with one epoch of a few iterations (set on the instance;
the checkpoint keeps the trainer's name, so nnU-Net's predictor finds its class). The
result is an ordinary trained model folder (dataset.json, plans.json, fold_0/checkpoint_final.pth)
under the git-ignored .cache/models/nnunet/, rebuilt only when this script changes. NOT FOR
CLINICAL USE: a couple of minutes of CPU training on phantoms.

    .venv/bin/python scripts/build_nnunet_model.py [--iterations 8]

Prints the model folder. nnU-Net reads its folders from environment variables when it is
imported, so the training runs in this process after setting them (call it as a program).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / ".cache" / "models" / "nnunet"
DATASET = "Dataset900_Phantom"
#: nnU-Net's default trainer, its epochs and iterations cut on the instance. (Its name is what the
#: checkpoint records and the predictor looks up; nnU-Net finds the default trainer without
#: importing the other trainer modules, some of which need timm and a torchvision that matches
#: torch: PyPI's torchvision is a CUDA build that cannot load beside the CPU torch.)
TRAINER = "nnUNetTrainer"
STAMP = "source.sha256"
LABELS = {"background": 0, "liver": 1, "spleen": 2}


def model_folder(root: Path = ROOT) -> Path:
    return root / "results" / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres"


def write_dataset(raw: Path, cases: int) -> None:
    import nibabel as nib

    from ai.phantom import LIVER, SPLEEN, make_phantom

    images, labels = raw / "imagesTr", raw / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for number in range(cases):
        phantom = make_phantom(3000 + number, shape=(40, 96, 96), spacing=(3.0, 2.5, 2.5), liver_lesions=(0, 0),
                               lung_nodules=(0, 0))
        affine = phantom.volume.ras_affine()
        target = np.zeros(phantom.labels.shape, dtype=np.uint8)
        target[phantom.labels == LIVER] = 1
        target[phantom.labels == SPLEEN] = 2
        # (k, j, i) arrays written as NIfTI (i, j, k): SimpleITK, nnU-Net's reader, gives back (k, j, i).
        nib.save(nib.Nifti1Image(phantom.volume.voxels.transpose(2, 1, 0).astype(np.float32), affine),
                 images / f"phantom_{number:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(target.transpose(2, 1, 0), affine), labels / f"phantom_{number:03d}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": cases,
                                                  "file_ending": ".nii.gz", "name": "phantom",
                                                  "description": "dicom-node synthetic CT phantoms; NOT FOR CLINICAL USE"}))


def build(root: Path = ROOT, cases: int = 5, iterations: int = 8) -> Path:
    digest = hashlib.sha256(Path(__file__).read_bytes() + f"{cases}:{iterations}".encode()).hexdigest()
    folder = model_folder(root)
    if (root / STAMP).exists() and (root / STAMP).read_text().strip() == digest and \
            (folder / "fold_0" / "checkpoint_final.pth").exists():
        return folder
    for stale in ("raw", "preprocessed", "results"):  # a rebuild starts from nothing
        shutil.rmtree(root / stale, ignore_errors=True)
    os.environ.update({"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
                       "nnUNet_results": str(root / "results"), "nnUNet_compile": "false",
                       # Training: augmentation in this process (no worker processes on a 2-core machine).
                       "nnUNet_n_proc_DA": "0"})
    write_dataset(root / "raw" / DATASET, cases)
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", "900", "-c", "3d_fullres",
                    "-np", "2", "--verify_dataset_integrity"], check=True, env={**os.environ, "nnUNet_n_proc_DA": "2"},
                   stdout=subprocess.DEVNULL)
    planned = time.perf_counter() - started
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = get_trainer_from_args(DATASET, "3d_fullres", 0, TRAINER, device=torch.device("cpu"))
        trainer.num_epochs = 1
        trainer.num_iterations_per_epoch = iterations
        trainer.num_val_iterations_per_epoch = 2
        trainer.run_training()
    (folder / "training.json").write_text(json.dumps({
        "trainer": TRAINER, "iterations_per_epoch": iterations, "epochs": trainer.num_epochs, "cases": cases,
        "plan_and_preprocess_seconds": round(planned, 1), "total_seconds": round(time.perf_counter() - started, 1),
        "patch_size": list(trainer.configuration_manager.patch_size)}, indent=2))
    (root / STAMP).write_text(digest + "\n")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--cases", type=int, default=5)
    args = parser.parse_args()
    print(build(iterations=args.iterations, cases=args.cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
