"""What every result object shares: who made it (manufacturer, algorithm identification), the
settings a site chooses (SEG encoding, empty frames), and UIDs derived from the job's identity
(:func:`derive_uid`), so that a re-run of a job produces the same objects and a PACS replaces
them instead of storing duplicates."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ai.types import Findings, LabelInfo

from .. import __version__

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
    kos_series_number: int = 9004
    device_name: str = "AI_NODE"
    empty_frames: EmptyFrames = EmptyFrames.KEEP


def coded(code: tuple[str, str, str]) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(*code)


@dataclass(frozen=True)
class Algorithm:
    """Who made a result, the one source every object's identification is built from (IHE AI
    Results): the SEG's Segment Algorithm Identification, the SR's TID 4019, the Contributing
    Equipment item of every object, and the Device UID that changes with the weights."""

    name: str
    version: str
    family: str = "Artificial Intelligence"  # or "Image Processing"
    weights_digest: str = ""

    @classmethod
    def of(cls, findings: Findings) -> Algorithm:
        return cls(findings.model_name, findings.model_version, findings.algorithm_family, findings.weights_digest)

    @property
    def family_code(self) -> hd.sr.CodedConcept:
        return codes.cid7162.ArtificialIntelligence if self.family == "Artificial Intelligence" \
            else codes.cid7162.MorphologicalOperations

    @property
    def device_uid(self) -> str:
        """Derived from the weights' digest (from name and version where none is known), so it
        changes whenever the weights do and is the same on every node running them."""
        basis = f"weights:{self.weights_digest}" if self.weights_digest else f"algorithm:{self.name}|{self.version}"
        return f"2.25.{uuid.uuid5(_UID_NAMESPACE, basis).int}"


#: CID 7005 Contributing Equipment Purpose of Reference: the algorithm processed the images.
PROCESSING_EQUIPMENT = hd.sr.CodedConcept("109102", "DCM", "Processing Equipment")


def algorithm_identification(findings: Findings) -> hd.AlgorithmIdentificationSequence:
    algorithm = Algorithm.of(findings)
    return hd.AlgorithmIdentificationSequence(name=algorithm.name, family=algorithm.family_code, version=algorithm.version)


def sr_algorithm(algorithm: Algorithm) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification, from the same source as the SEG's."""
    return hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version)


def contributing_equipment(algorithms: Sequence[Algorithm], settings: ResultSettings, started: datetime | None) -> list[Dataset]:
    """One Contributing Equipment item per algorithm: Processing Equipment, the node as
    manufacturer, the algorithm as model name, its version and the node's as software
    versions, its Device UID, when it ran."""
    items = []
    for algorithm in algorithms:
        item = hd.ContributingEquipment(
            manufacturer=MANUFACTURER, purpose_of_reference=PROCESSING_EQUIPMENT,
            manufacturer_model_name=algorithm.name[:64], software_versions=[algorithm.version[:64], f"dicom-node {__version__}"],
            station_name=settings.device_name[:16], contribution_datetime=started,
            contribution_description=f"{algorithm.family} algorithm {algorithm.name} {algorithm.version}"[:64],
        )
        item.DeviceUID = algorithm.device_uid
        items.append(item)
    return items


def set_content_datetime(ds: Dataset, started: datetime | None) -> None:
    """Content Date/Time: when the analysis began (IHE AI Results), not when the object was encoded."""
    if started is not None:
        ds.ContentDate = started.strftime("%Y%m%d")
        ds.ContentTime = started.strftime("%H%M%S.%f")


def analysis_started(findings: Findings) -> datetime | None:
    """When the worker started the analysis (it records it in ``extra``)."""
    value = findings.extra.get("analysis_started")
    return value if isinstance(value, datetime) else None


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
