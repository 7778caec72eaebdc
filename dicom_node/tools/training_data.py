"""Training cases from DICOM: a CT/MR series with a DICOM SEG as its label.

Each case folder holds the image series' files and one Segmentation instance that references
them. The SEG's segments become label values through the model card's label names (a segment
whose label matches a card label's name gets that label's value), so a SEG from any tool that
names its segments like the card can train the model. Lives on the DICOM side of the seam:
it hands the ai package plain (Volume, label array) pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread

from ai.types import Volume

from ..errors import VolumeError
from ..storage.volume import load_series

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def read_case(folder: Path, label_values: Mapping[str, int]) -> tuple[Volume, np.ndarray]:
    """The series in ``folder`` as a Volume and its SEG as a uint8 label map on the same grid."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    segs, images = [], []
    for path in files:
        header = dcmread(path, stop_before_pixels=True)
        (segs if str(header.SOPClassUID) == SEGMENTATION_STORAGE else images).append(path)
    if len(segs) != 1:
        raise VolumeError(f"{folder}: expected one SEG instance, found {len(segs)}")
    series = load_series(images)
    seg = hd.seg.segread(segs[0])
    segment_values = {}
    for number in seg.segment_numbers:
        name = str(seg.get_segment_description(number).segment_label)
        if name in label_values:
            segment_values[number] = label_values[name]
    if not segment_values:
        raise VolumeError(f"{segs[0]}: no segment label matches the model's labels ({', '.join(label_values)})")
    uids = [f.sop_instance_uid for f in series.frames]
    if any(f.frame_number is not None for f in series.frames):
        raise VolumeError(f"{folder}: training from SEGs over multi-frame images is not supported yet")
    labels = np.zeros(series.volume.shape, dtype=np.uint8)
    for number, value in segment_values.items():
        masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number],
                                                  combine_segments=True)
        labels[masks.astype(bool)] = value
    return series.volume, labels


def dicom_seg_cases(root: Path, label_values: Mapping[str, int]) -> Iterator[tuple[Volume, np.ndarray]]:
    """One case per sub-folder of ``root``."""
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        yield read_case(folder, label_values)
