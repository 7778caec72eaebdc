"""A job's result objects written to its results folder: the SEG in every encoding its
destinations take (and the SR that goes with a Label Map SEG), the SR, the key images when the
route asks for them, the uncertainty map when the site does. Written before the job is marked
done (durable), so the outbox only ever names files that exist."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ai.types import Findings

from ..results import ResultSettings, SegmentationEncoding, build_report, build_segmentation, segmentation_variants
from ..results.key_images import build_key_images
from ..results.parametric_map import build_uncertainty_map
from ..storage.store import write_dataset_atomically
from ..storage.volume import SeriesVolume


def write_result_files(source: SeriesVolume, findings: Findings, job_key: str, settings: ResultSettings, folder: Path,
                       wanted: Sequence[SegmentationEncoding], key_images: bool, uncertainty_map: bool) -> dict[str, Path]:
    """{object key: path} of what was written ("seg-binary", "sr-binary", "kos", ...)."""
    files: dict[str, Path] = {}

    def write(key: str, dataset: object) -> None:
        path = folder / f"{key}.dcm"
        write_dataset_atomically(dataset, path)  # type: ignore[arg-type]
        files[key] = path

    binary_seg = None
    for encoding in segmentation_variants(list(wanted)):
        seg = build_segmentation(source, findings, job_key, settings, encoding)
        if seg is None:
            break
        write(f"seg-{encoding.value}", seg)
        if encoding is SegmentationEncoding.LABELMAP:
            write("sr-labelmap", build_report(source, findings, seg, f"{job_key}:labelmap", settings))
        elif encoding is SegmentationEncoding.BINARY:
            binary_seg = seg
    write("sr-binary", build_report(source, findings, binary_seg, job_key, settings))
    kos = build_key_images(source, findings, job_key, settings) if key_images else None
    if kos is not None:
        write("kos", kos)
    uncertainty = build_uncertainty_map(source, findings, job_key, settings) if uncertainty_map else None
    if uncertainty is not None:
        write("uncertainty", uncertainty)
    return files
