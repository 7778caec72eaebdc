"""What every result object shares: who made it (manufacturer, algorithm identification), the
settings a site chooses (SEG encoding, empty frames), and UIDs derived from the job's identity
(:func:`derive_uid`), so that a re-run of a job produces the same objects and a PACS replaces
them instead of storing duplicates."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from ai.types import Findings, LabelInfo

MANUFACTURER = "dicom-node"


class EmptyFrames(str, Enum):
    KEEP = "keep"
    OMIT = "omit"


class SegmentationEncoding(str, Enum):
    """How a peer gets its SEG. ``binary`` is what every PACS and viewer accepts today."""

    BINARY = "binary"
    BINARY_JPEG2000 = "binary-jpeg2000"
    LABELMAP = "labelmap"


#: Name space of the name-based (version 5) UUIDs our result UIDs are made of.
_UID_NAMESPACE = uuid.UUID("6f1d2a0e-8d4b-5c1e-9b1e-3c6a1f0e2d4b")


def derive_uid(job_key: str, role: str) -> str:
    """A UID that depends only on the job's identity and the object's role ("seg-series", ...):
    the 2.25 form of a name-based UUID (PS3.5 B.2). (pydicom's ``generate_uid(prefix=None)``
    ignores ``entropy_srcs`` and returns a random UUID, so it cannot be used here.)"""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{job_key}|{role}').int}"


@dataclass(frozen=True)
class ResultSettings:
    """Numbering and identification of result series (from the configuration, never random)."""

    seg_series_number: int = 9001
    sr_series_number: int = 9002
    map_series_number: int = 9003
    device_name: str = "AI_NODE"
    empty_frames: EmptyFrames = EmptyFrames.KEEP


def coded(code: tuple[str, str, str]) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(*code)


def algorithm_identification(findings: Findings) -> hd.AlgorithmIdentificationSequence:
    family = codes.cid7162.ArtificialIntelligence if findings.algorithm_family == "Artificial Intelligence" \
        else codes.cid7162.MorphologicalOperations
    return hd.AlgorithmIdentificationSequence(name=findings.model_name, family=family, version=findings.model_version)


def present_labels(findings: Findings) -> list[LabelInfo]:
    """Labels with at least one voxel, in label order: these become the SEG's segments 1..N.

    The pipeline measured every present label already; counting the label map again (0.3 s
    for a 512x512x300 CT) is only the fallback for findings without measurements."""
    values = {m.label for m in findings.measurements if m.kind == "label" and m.voxel_count}
    if not values and findings.label_map.any():
        values = set(np.flatnonzero(np.bincount(findings.label_map.ravel(), minlength=256)).tolist()) - {0}
    return [info for info in sorted(findings.labels, key=lambda i: i.value) if info.value in values]


def segmentation_variants(encodings: Sequence[SegmentationEncoding]) -> list[SegmentationEncoding]:
    """The encodings to build for a peer, preferred first, always ending with plain BINARY so a
    peer that refuses the others at association still gets a SEG."""
    ordered = [e for e in dict.fromkeys(encodings) if e is not SegmentationEncoding.BINARY]
    return [*ordered, SegmentationEncoding.BINARY]
