"""Reading the input folder the way a module does: the DICOM files, sorted along the normal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom


def read_input() -> tuple[list[pydicom.Dataset], np.ndarray]:
    """(datasets sorted along the slice normal, HU as a (k, j, i) array)."""
    folder = Path(os.environ["MERCURE_IN_DIR"])
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    datasets.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    return datasets, hu
