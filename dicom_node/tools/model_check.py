"""``dicom-node models --check``: load each configured pipeline and run it once on a small
phantom CT, so a site sees that a model it plugged in loads, runs on this machine and says
something, before a patient's series reaches it.

The phantom (ai/phantom.py, 48 x 128 x 128 at 2.5 x 2 x 2 mm, portal-venous HU) is not a
test of accuracy: a model for another body region finds little in it. What fails the check is
what would fail a job: a card, weights or runtime that does not load, or a run that raises.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ai.phantom import make_phantom

from ..config import PipelineSpec
from ..pipelines.build import build_pipeline
from ..pipelines.command import CommandPipeline
from ..storage.volume import load_series
from .synthetic import write_volume_series

PHANTOM_SHAPE = (48, 128, 128)
PHANTOM_SPACING = (2.5, 2.0, 2.0)


def check_pipeline(name: str, spec: PipelineSpec) -> str:
    """"ok: ..." with what the pipeline found and how long it took, or "failed: why"."""
    try:
        with tempfile.TemporaryDirectory(prefix="models-check-") as tmp:
            pipeline = build_pipeline(spec, name=name, work_root=Path(tmp) / "work")
            phantom = make_phantom(3, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING, liver_lesions=(0, 0), lung_nodules=(0, 0))
            started = time.perf_counter()
            if isinstance(pipeline, CommandPipeline):  # a module reads DICOM files, as it would from the node
                files = write_volume_series(phantom.volume, Path(tmp) / "series", seed=3)
                output = pipeline.run_series(load_series(files), files, f"check:{name}", keep=Path(tmp) / "kept")
                findings = output.findings
                extra = f", wrote {len(output.dicom)} DICOM object(s)" if output.dicom else ""
            else:
                findings, extra = pipeline.run(phantom.volume), ""
            seconds = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - whatever a site's model raises is the check's answer
        return f"failed: {type(exc).__name__}: {exc}"
    found = sorted({m.name for m in findings.measurements if m.kind == "label" and m.voxel_count}) if findings else []
    return f"ok: {pipeline.name} {pipeline.version} ran in {seconds:.1f} s, found {', '.join(found) or 'nothing'}{extra}"
