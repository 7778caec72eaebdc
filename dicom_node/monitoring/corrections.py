"""Corrections as data: a segmentation that reaches the node and refers to a source series the
node segmented (a radiologist edited the node's SEG in OHIF or 3D Slicer and stored it) is a
correction. Per segment, matched by segmented property type (then by label), its Dice and
symmetric mean surface distance against the node's own SEG are recorded as the model's
real-world performance (per model version and scanner), and the case (source series and
corrected SEG) is kept under ``monitoring.cases_path`` as a training case.

The node's own SEG coming back (the same SOP Instance or Series) is not a correction."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from scipy import ndimage

from ..config import NodeConfig
from ..flow.worker import results_folder
from ..storage.events import emit
from ..storage.index import Index
from ..storage.volume import load_series
from .records import scanner_label

log = logging.getLogger(__name__)
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class SegmentComparison:
    name: str
    dice: float
    mean_surface_mm: float | None  # None when either mask is empty
    node_ml: float
    corrected_ml: float


def surface_distance(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float | None:
    """Symmetric mean distance (mm) between the surfaces of two masks on one grid."""
    if not a.any() or not b.any():
        return None
    surface_a = a & ~ndimage.binary_erosion(a)
    surface_b = b & ~ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    return float((to_b[surface_a].sum() + to_a[surface_b].sum()) / (surface_a.sum() + surface_b.sum()))


def compare(node_seg: Any, corrected: Any, source_uids: list[str], spacing: tuple[float, float, float]) -> list[SegmentComparison]:
    """Each segment of the node's SEG against its counterpart in the corrected one (by property
    type code, then label); a segment the radiologist deleted counts as Dice 0."""
    voxel_ml = float(np.prod(spacing)) / 1000.0

    def masks(seg: Any) -> dict[int, np.ndarray]:
        numbers = list(seg.segment_numbers)
        pixels = seg.get_pixels_by_source_instance(source_uids, segment_numbers=numbers, ignore_spatial_locations=True,
                                                   assert_missing_frames_are_empty=True, dtype=np.uint8)
        return {n: pixels[..., i] > 0 for i, n in enumerate(numbers)}

    def keys(seg: Any, number: int) -> tuple[str, str]:
        description = seg.get_segment_description(number)
        kind = description.segmented_property_type
        return f"{kind.scheme_designator}:{kind.value}", str(description.segment_label).strip().lower()

    ours, theirs = masks(node_seg), masks(corrected)
    their_keys = {n: keys(corrected, n) for n in theirs}
    out = []
    for number, mask in ours.items():
        code, label = keys(node_seg, number)
        match = next((n for n, k in their_keys.items() if k[0] == code), None) or \
            next((n for n, k in their_keys.items() if k[1] == label), None)
        other = theirs[match] if match is not None else np.zeros_like(mask)
        total = int(mask.sum()) + int(other.sum())
        dice = 1.0 if total == 0 else 2.0 * float((mask & other).sum()) / total
        out.append(SegmentComparison(label or code, dice, surface_distance(mask, other, spacing),
                                     float(mask.sum()) * voxel_ml, float(other.sum()) * voxel_ml))
    return out


def _referenced_series(ds: Any) -> str | None:
    for item in ds.get("ReferencedSeriesSequence", []):
        if item.get("SeriesInstanceUID"):
            return str(item.SeriesInstanceUID)
    return None


def _node_job(index: Index, config: NodeConfig, series_uid: str) -> tuple[dict[str, Any], Path] | None:
    """The newest done job on ``series_uid`` whose SEG is on disk."""
    for job in index.query("SELECT id, key FROM jobs WHERE series_uid = ? AND state = 'done' ORDER BY id DESC", (series_uid,)):
        path = results_folder(config.results.path, str(job["key"])) / "seg-binary.dcm"
        if path.exists():
            return dict(job), path
    return None


def _keep_case(config: NodeConfig, files: list[Path], corrected_path: Path, corrected_uid: str) -> Path:
    """The training case: the source series and the corrected SEG, side by side; with
    ``monitoring.cases_deidentify`` through that de-identification profile (the site key maps
    UIDs alike in both, so the SEG still refers to its series), else as received."""
    folder = Path(config.monitoring.cases_path) / hashlib.sha256(corrected_uid.encode()).hexdigest()[:20]
    if config.monitoring.cases_deidentify:
        from ..privacy.deidentify import deidentifier_for
        from ..privacy.export import export

        engine = deidentifier_for(config.deidentification, config.monitoring.cases_deidentify)
        export([*files, corrected_path], folder, engine)
        return folder
    (folder / "source").mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, folder / "source" / path.name)
    shutil.copy2(corrected_path, folder / "corrected-seg.dcm")
    return folder


def examine(index: Index, config: NodeConfig, sop_uid: str, path: Path, now: float | None = None) -> dict[str, Any] | None:
    """Record ``path`` as a correction when it is one; the recorded row, else None."""
    now = time.time() if now is None else now
    if index.query("SELECT 1 FROM corrections WHERE corrected_sop_uid = ?", (sop_uid,)):
        return None
    corrected = pydicom.dcmread(path)
    source_series = _referenced_series(corrected)
    found = _node_job(index, config, source_series) if source_series else None
    if found is None:
        return None
    job, node_path = found
    node_seg = hd.seg.segread(node_path)
    if str(corrected.SOPInstanceUID) == str(node_seg.SOPInstanceUID) or \
            str(corrected.SeriesInstanceUID) == str(node_seg.SeriesInstanceUID):
        return None  # our own SEG, back from the PACS
    files = [Path(r["path"]) for r in index.query("SELECT path FROM instances WHERE series_uid = ?", (source_series,))]
    source = load_series(files)
    uids = [frame.sop_instance_uid for frame in source.frames]
    segments = compare(node_seg, hd.seg.Segmentation.from_dataset(corrected), uids, source.volume.spacing)
    inference = index.query("SELECT model, model_version, device_uid, manufacturer, scanner_model FROM inferences "
                            "WHERE job_id = ? AND outcome = 'analysed' ORDER BY id DESC LIMIT 1", (job["id"],))
    who = dict(inference[0]) if inference else {"model": "", "model_version": "", "device_uid": "", "manufacturer": "",
                                                "scanner_model": ""}
    case = _keep_case(config, files, path, sop_uid)
    mean = float(np.mean([s.dice for s in segments])) if segments else None
    row = {"created_at": now, "job_id": job["id"], **who, "source_series_uid": source_series, "corrected_sop_uid": sop_uid,
           "mean_dice": mean, "segments": [s.__dict__ for s in segments], "case_path": str(case)}
    with index.transaction() as db:
        db.execute("INSERT INTO corrections(created_at, job_id, model, model_version, device_uid, source_series_uid, "
                   "corrected_sop_uid, manufacturer, scanner_model, mean_dice, segments, case_path) "
                   "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (now, job["id"], who["model"], who["model_version"], who["device_uid"], source_series, sop_uid,
                    who["manufacturer"], who["scanner_model"], mean, json.dumps(row["segments"]), str(case)))
        emit(db, "correction.recorded", series_uid=source_series, job_id=int(job["id"]), now=now,
             payload={"model": who["model"], "model_version": who["model_version"], "mean_dice": mean,
                      "segments": {s.name: round(s.dice, 4) for s in segments}})
    log.info("Correction of job %s's SEG recorded: mean Dice %.3f (%s)", job["id"], mean or 0.0,
             ", ".join(f"{s.name} {s.dice:.3f}" for s in segments))
    return row


def scan(index: Index, config: NodeConfig, after: float = 0.0) -> tuple[list[dict[str, Any]], float]:
    """Examine every SEG received after ``after`` (received_at); (recorded corrections, the newest
    received_at seen, for the next scan)."""
    recorded, newest = [], after
    for row in index.query("SELECT sop_instance_uid, path, received_at FROM instances WHERE sop_class_uid = ? "
                           "AND received_at > ? ORDER BY received_at", (SEG_CLASS, after)):
        newest = max(newest, float(row["received_at"]))
        try:
            found = examine(index, config, str(row["sop_instance_uid"]), Path(row["path"]))
        except Exception as exc:  # noqa: BLE001 - one unreadable SEG must not stop the others
            log.warning("SEG %s could not be examined as a correction: %s", row["sop_instance_uid"], exc)
            continue
        if found is not None:
            recorded.append(found)
    return recorded, newest


def recent_corrections(index: Index, limit: int = 200) -> list[dict[str, Any]]:
    rows = [dict(r) for r in index.query("SELECT * FROM corrections ORDER BY id DESC LIMIT ?", (limit,))]
    for row in rows:
        row["segments"] = json.loads(row["segments"] or "[]")
        row["scanner"] = scanner_label(row)
    return rows
