"""The key images of a finding as a Key Object Selection (KOS, document title "Of Interest"):
what a route asks for with ``key_images: true`` (IHE AI Results), so a PACS flags the slices a
radiologist should look at first. Key images are the slices each lesion's longest axial diameter
lies on; without lesions, those of the structures measured with a diameter (each side of a
paired organ, an organ in one piece)."""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ai.types import Findings

from ..storage.volume import SeriesVolume
from .identity import (
    MANUFACTURER,
    Algorithm,
    ResultSettings,
    analysis_started,
    contributing_equipment,
    derive_uid,
    set_content_datetime,
)

#: A KOS names a handful of images, not a series.
MAX_KEY_IMAGES = 20


def key_slices(findings: Findings) -> list[int]:
    """The slice indices (k) of the key images, in order of first mention, at most MAX_KEY_IMAGES."""
    lesions = [m for m in findings.measurements if m.kind == "lesion" and m.diameter_endpoints_kji is not None]
    chosen = lesions or [m for m in findings.measurements if m.diameter_endpoints_kji is not None]
    slices = dict.fromkeys(int(round(m.diameter_endpoints_kji[0][0])) for m in chosen)  # type: ignore[index]
    return list(slices)[:MAX_KEY_IMAGES]


def build_key_images(source: SeriesVolume, findings: Findings, job_key: str,
                     settings: ResultSettings) -> hd.ko.KeyObjectSelectionDocument | None:
    """The KOS of ``findings``' key images (None when nothing was measured on a slice)."""
    wanted = {source.frames[k].sop_instance_uid for k in key_slices(findings)}
    if not wanted:
        return None
    images: list[Dataset] = [ds for ds in source.datasets if str(ds.SOPInstanceUID) in wanted]
    algorithm = Algorithm.of(findings)
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest, referenced_objects=images,
        description=f"key images of {algorithm.name} {algorithm.version}"[:1024],
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=images, content=content,
        series_instance_uid=derive_uid(job_key, "kos-series"), series_number=settings.kos_series_number,
        sop_instance_uid=derive_uid(job_key, "kos"), instance_number=1, manufacturer=MANUFACTURER,
        contributing_equipment=contributing_equipment([algorithm], settings, analysis_started(findings)),
    )
    kos.SeriesDescription = f"AI key images ({algorithm.name} v{algorithm.version})"[:64]
    set_content_datetime(kos, analysis_started(findings))
    return kos
