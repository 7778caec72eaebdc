"""The real scans of ../shared/data/real-scans/ (TotalSegmentator's test inputs) as Volumes and
as DICOM series, and reading a node's SEG back onto the scan's grid to score it.

NIfTI is RAS, DICOM LPS: the first two rows of the affine are negated. The NIfTI array is
indexed (i, j, k); a Volume is (k, j, i). ``write_as_dicom`` keeps the HU and the geometry
(``write_volume_series`` writes slice k at the volume's own patient position).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import MRImageStorage

from ai.types import Volume
from dicom_node.tools.synthetic import write_volume_series

REAL_SCANS = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-scans"
LUNG = (10, 11, 12, 13, 14)
BONE = (*range(25, 51), *range(69, 79), 91, *range(92, 117))
#: Reference structure groups by the names the pipelines report (TotalSegmentator's "total" map).
REFERENCE_GROUPS: dict[str, tuple[int, ...]] = {"lungs": LUNG, "bone": BONE, "liver": (5,), "spleen": (1,),
                                                "kidneys": (2, 3)}


def available() -> bool:
    return (REAL_SCANS / "ct_abdomen_3mm.nii.gz").exists()


def nifti_volume(name: str, modality: str = "CT") -> Volume:
    import nibabel as nib

    image = nib.load(str(REAL_SCANS / name))
    affine = image.affine.copy()
    affine[:2] *= -1  # RAS -> LPS
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    voxels = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)
    return Volume(voxels, tuple(float(z) for z in zooms[::-1]), tuple(float(x) for x in affine[:3, 3]),
                  affine[:3, :3] / zooms, modality)


def reference_labels(name: str = "ct_abdomen_3mm_reference_labels.nii.gz") -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(REAL_SCANS / name)).dataobj).transpose(2, 1, 0)


def reference_names() -> dict[int, str]:
    return {int(k): v for k, v in json.loads((REAL_SCANS / "reference_label_names.json").read_text()).items()}


def write_as_dicom(name: str, folder: Path, *, modality: str = "CT", body_part: str = "ABDOMEN",
                   seed: int = 0) -> list[Path]:
    """A NIfTI scan as a single-frame DICOM series (CT Image, or MR Image for ``modality`` MR)."""
    volume = nifti_volume(name, modality)
    paths = write_volume_series(volume, folder, seed=seed, patient_id=f"REAL{seed:03d}", patient_name="Real^Scan",
                                description=f"{name} (TotalSegmentator test data)")
    for path in paths:
        ds = dcmread(path)
        ds.BodyPartExamined = body_part
        ds.Manufacturer = "TotalSegmentator test data (NIfTI, rewritten)"
        if modality == "MR":
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.Modality = "MR"
            for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType", "KVP"):
                if keyword in ds:
                    delattr(ds, keyword)
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 500, 15, 1, 1.5
        ds.save_as(path, enforce_file_format=True)
    return paths


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def seg_masks(seg_path: Path, series: list[Path]) -> dict[str, np.ndarray]:
    """Each segment of a BINARY SEG as a mask on the grid of ``series`` (files in k order)."""
    order = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): k for k, p in enumerate(series)}
    first = dcmread(series[0], stop_before_pixels=True)
    shape = (len(series), int(first.Rows), int(first.Columns))
    seg = dcmread(seg_path)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(-1, shape[1], shape[2])
    masks = {name: np.zeros(shape, dtype=bool) for name in names.values()}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        masks[names[number]][order[str(source)]] |= frame.astype(bool)
    return masks
