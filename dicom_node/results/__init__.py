"""Findings -> standard DICOM result objects, with highdicom, one module per IOD as highdicom
has them: a Segmentation (seg.py), a Comprehensive 3D SR holding a TID 1500 Measurement Report
(sr.py), a Parametric Map of the model's uncertainty (parametric_map.py); what they share
(identity.py) and the dashboard's preview images (preview.py).

What a viewer needs, and how each need is met here:

* The SEG lies in the geometry of its source: one frame per source frame (``empty_frames:
  keep`` is the default; ``omit`` drops frames with no voxel of a segment, which is smaller but
  leaves viewers that match frames by position to guess), each frame references the source
  image it was drawn on, and every segment carries its SNOMED CT category/type, the algorithm
  (name, version, family) and a recommended display colour (OHIF paints every segment red
  without one).
* The SR has one measurement group per segment (TID 1411, volumetric: volume, mean, standard
  deviation, referencing the SEG segment) and one per lesion (TID 1410, planar: the longest
  axial diameter as a polyline on its key slice, with the lesion's volume and score). OHIF
  takes the first child of a NUM item as that measurement's image coordinates (and fails on a
  NUM whose child is, say, an algorithm name), so NUM items carry no children: the algorithm is
  named once per group. Lesion groups carry image coordinates, which is what OHIF draws.
  Classification results are a TID 1501 group of qualitative evaluations (present / absent)
  that references the key image.
* UIDs come from the job's identity (:func:`derive_uid`), so a re-run of a job produces the same
  objects and a PACS replaces them instead of storing duplicates.
"""

from __future__ import annotations

from .identity import EmptyFrames, ResultSettings, SegmentationEncoding, derive_uid, present_labels, segmentation_variants
from .seg import build_segmentation
from .sr import NOT_ANALYSED, build_declined_report, build_report

__all__ = [
    "NOT_ANALYSED", "EmptyFrames", "ResultSettings", "SegmentationEncoding", "build_declined_report", "build_report",
    "build_segmentation", "derive_uid",
    "present_labels", "segmentation_variants",
]
