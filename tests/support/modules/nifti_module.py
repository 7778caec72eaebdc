"""Writes a NIfTI label map (dense bone over 300 HU = 1, air inside the body = 2) with
labels.json, in nibabel's closest canonical (RAS) orientation: axes flipped against the input."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _series import read_input  # noqa: E402

datasets, hu = read_input()
task = json.loads((Path(os.environ["MERCURE_IN_DIR"]) / "task.json").read_text())
labels = np.zeros(hu.shape, dtype=np.uint8)
labels[hu > 300] = 1
labels[(hu < -400) & (hu > -990)] = 2
first = datasets[0]
orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
row, col = orientation[:3], orientation[3:]
dy, dx = (float(v) for v in first.PixelSpacing)
p0 = np.asarray(first.ImagePositionPatient, dtype=float)
step = np.asarray(datasets[1].ImagePositionPatient, dtype=float) - p0
affine = np.eye(4)
affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row * dx, col * dy, step, p0
affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
image = nib.as_closest_canonical(nib.Nifti1Image(labels.transpose(2, 1, 0), affine))
out = Path(os.environ["MERCURE_OUT_DIR"])
nib.save(image, out / "labels.nii.gz")
(out / "labels.json").write_text(json.dumps({"1": "bone", "2": {"name": "air in body", "color": [0, 200, 255]}}))
(out / "seen-settings.json").write_text(json.dumps(task["process"]["settings"]))
