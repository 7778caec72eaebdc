"""Writes a DICOM SEG (highdicom) of the voxels over 300 HU, referencing the input series."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

sys.path.insert(0, str(Path(__file__).parent))
from _series import read_input  # noqa: E402

datasets, hu = read_input()
mask = (hu > 300).astype(np.uint8)
if os.environ.get("SHIFT_SEG"):  # a SEG drawn 7 mm off the series' slices
    for ds in datasets:
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 7.0]
algorithm = hd.AlgorithmIdentificationSequence(name="site-bone", version="1.0", family=codes.cid7162.ArtificialIntelligence)
segment = hd.seg.SegmentDescription(
    segment_number=1, segment_label="bone", segmented_property_category=codes.SCT.Tissue,
    segmented_property_type=codes.SCT.Bone, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
    algorithm_identification=algorithm)
seg = hd.seg.Segmentation(
    source_images=datasets, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
    segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=700, sop_instance_uid=hd.UID(),
    instance_number=1, manufacturer="site", manufacturer_model_name="site-bone", software_versions="1.0",
    device_serial_number="1")
seg.save_as(Path(os.environ["MERCURE_OUT_DIR"]) / "bone-seg.dcm", enforce_file_format=True)
