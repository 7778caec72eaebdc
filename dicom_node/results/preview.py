"""A PNG preview of a segmentation over its CT: the demo's picture and the dashboard's.

Key slices are those where most segments show, spread along the volume; each segment is drawn
in its recommended display colour over a soft-tissue window.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import highdicom as hd
import numpy as np

from ..storage.index import Index
from ..storage.volume import SeriesVolume, load_series


def preview_png(source: SeriesVolume, seg: hd.seg.Segmentation, path: Path, slices: int = 3) -> list[int]:
    """Key slices (where most segments are present) with the SEG over the CT in each segment's
    colour; returns the slice indices drawn."""
    from PIL import Image

    uids = [f.sop_instance_uid for f in source.frames]
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, relabel=False)
    colours = {int(d.SegmentNumber): hd.color.CIELabColor.from_dicom_value(d.RecommendedDisplayCIELabValue).to_rgb()
               for d in seg.SegmentSequence}
    richness = np.asarray([len(np.unique(s)) for s in labels])
    candidates = np.argsort(-richness, kind="stable")
    chosen: list[int] = []
    for k in candidates:  # spread the key slices along the volume
        if all(abs(int(k) - c) > len(labels) // (2 * slices) for c in chosen):
            chosen.append(int(k))
        if len(chosen) == slices:
            break
    chosen.sort()
    tiles = []
    for k in chosen:
        hu = source.volume.voxels[k]
        grey = (np.clip((hu + 400.0) / 800.0, 0, 1) * 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        for number, colour in colours.items():
            mask = labels[k] == number
            rgb[mask] = 0.55 * rgb[mask] + 0.45 * np.asarray(colour, dtype=np.float32)
        tiles.append(rgb.astype(np.uint8))
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)
    return chosen


def job_preview(index: Index, job_id: int) -> Path:
    """The PNG preview of a finished job's SEG over its series, made once and kept beside the
    SEG; LookupError when the job has no SEG (yet, or at all)."""
    rows = index.query("SELECT d.candidates, j.series_uid FROM deliveries d JOIN jobs j ON j.id = d.job_id "
                       "WHERE d.job_id = ? AND d.object = 'seg' LIMIT 1", (job_id,))
    if not rows:
        raise LookupError(f"job {job_id} has no segmentation")
    seg_path = Path(json.loads(rows[0]["candidates"])[0]["path"])
    png = seg_path.with_name("preview.png")
    if png.exists():
        return png
    if not seg_path.exists():
        raise LookupError(f"job {job_id}: its segmentation {seg_path} is gone")
    source = load_series(index.series_files(rows[0]["series_uid"]))
    part = png.with_name(f".preview.{os.getpid()}.png")
    preview_png(source, hd.seg.segread(seg_path), part)
    os.replace(part, png)
    return png
