"""Synthetic CT series, written as valid DICOM files, for demos, tests and benchmarks.

Nothing here pretends to be anatomy (the AI package has the phantom with ground truth); this
writes a geometrically correct axial CT series of any size quickly, so the network path can be
exercised with realistic file sizes and counts without shipping patient data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ai.types import Volume

#: Our own UID root for generated objects (pydicom's, with a suffix of our own).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."


def ct_slice(
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    index: int,
    rows: int,
    columns: int,
    pixels: np.ndarray,
    spacing: float = 0.7,
    thickness: float = 1.0,
    patient_id: str = "SYNTH001",
    patient_name: str = "Synthetic^Patient",
    series_number: int = 1,
    description: str = "Synthetic CT",
) -> Dataset:
    """One axial CT Image Storage instance, ready for ``save_as(..., enforce_file_format=True)``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(UID_PREFIX, entropy_srcs=[study_uid, "frame-of-reference"])
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic study"
    ds.Modality = "CT"
    ds.Manufacturer = "dicom-node synthetic"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [-(columns * spacing) / 2, -(rows * spacing) / 2, index * thickness]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = thickness
    ds.PixelSpacing = [spacing, spacing]
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def write_ct_series(
    folder: Path,
    slices: int,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYNTH001",
) -> list[Path]:
    """Write ``slices`` axial CT files into ``folder``; return their paths in slice order.

    UIDs derive from ``seed`` unless given, so the same call always writes the same files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid(UID_PREFIX, entropy_srcs=[f"study-{seed}"])
    series_uid = series_uid or generate_uid(UID_PREFIX, entropy_srcs=[study_uid, f"series-{seed}"])
    yy, xx = np.mgrid[0:rows, 0:columns]
    body = ((yy - rows / 2) / (rows * 0.4)) ** 2 + ((xx - columns / 2) / (columns * 0.45)) ** 2 <= 1
    paths = []
    for index in range(slices):
        noise = rng.normal(0, 12, size=(rows, columns))
        pixels = np.where(body, 40 + noise, -1000 + noise / 4).astype(np.int16)
        sop_uid = generate_uid(UID_PREFIX, entropy_srcs=[series_uid, str(index)])
        ds = ct_slice(study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, index=index,
                      rows=rows, columns=columns, pixels=pixels, patient_id=patient_id)
        path = folder / f"CT{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_volume_series(
    volume: Volume,
    folder: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: int = 0,
    patient_id: str = "PHANTOM001",
    patient_name: str = "Phantom^Synthetic",
    description: str = "Synthetic CT phantom",
    series_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """Write a Volume (HU, any orientation) as a single-frame CT series that reads back to the
    same geometry: slice k sits at ``volume.index_to_patient((k, 0, 0))`` with the volume's
    row and column directions. ``transfer_syntax`` may be a lossless compressed one (RLE,
    JPEG-LS, JPEG 2000 lossless), encoded by pydicom."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid(UID_PREFIX, entropy_srcs=[f"volume-study-{seed}"])
    series_uid = series_uid or generate_uid(UID_PREFIX, entropy_srcs=[study_uid, f"volume-series-{seed}"])
    direction = np.asarray(volume.direction, dtype=float)
    hu = np.clip(np.rint(volume.voxels), -32768, 32767).astype(np.int16)
    paths = []
    for k in range(volume.shape[0]):
        sop_uid = generate_uid(UID_PREFIX, entropy_srcs=[series_uid, str(k)])
        ds = ct_slice(study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, index=k,
                      rows=volume.shape[1], columns=volume.shape[2], pixels=hu[k], spacing=volume.spacing[1],
                      thickness=volume.spacing[0], patient_id=patient_id, patient_name=patient_name,
                      series_number=series_number, description=description)
        ds.PixelSpacing = [round(volume.spacing[1], 6), round(volume.spacing[2], 6)]
        ds.ImagePositionPatient = [round(float(x), 4) for x in volume.index_to_patient(np.array([k, 0, 0]))]
        ds.ImageOrientationPatient = [round(float(x), 6) for x in (*direction[:, 0], *direction[:, 1])]
        if direction[2, 2] < 0.9:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
        path = folder / f"CT{k:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
