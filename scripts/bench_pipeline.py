#!/usr/bin/env python3
"""Pipeline benchmark: one 512 x 512 x 300 phantom CT through every analysis stage.

The phantom is written as a DICOM series (int16, one file per slice), then timed stage by
stage as the node runs it: load + decode (pydicom reading the files), volume (sorting,
geometry, HU), preprocess, inference, post-process, measurements. Peak RSS of this process is
reported against the raw volume size (512 x 512 x 300 x 2 bytes). Runs on CUDA when torch sees
one (mixed precision), else on the CPU.

    .venv/bin/python scripts/bench_pipeline.py [--slices 300] [--device auto]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai.phantom import make_phantom  # noqa: E402
from ai.pipeline import SegmentationPipeline  # noqa: E402
from ai.registry import ModelRegistry  # noqa: E402
from dicom_node.synthetic import write_volume_series  # noqa: E402
from dicom_node.volume import load_series  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="ct-organs")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # internal: write the series and exit
    args = parser.parse_args()

    if args.write:
        phantom = make_phantom(77, shape=(args.slices, args.size, args.size), spacing=(1.0, 0.7, 0.7))
        write_volume_series(phantom.volume, args.write)
        return 0
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        # Generated in a child process so its memory does not count in this one's peak.
        subprocess.run([sys.executable, __file__, "--write", str(root / "series"), "--slices", str(args.slices),
                        "--size", str(args.size)], check=True)
        files = sorted((root / "series").iterdir())
        raw_mb = args.slices * args.size * args.size * 2 / 2**20
        baseline_rss = peak_rss_mb()
        print(f"{len(files)} files written to {root}; raw volume {raw_mb:.0f} MB; RSS before analysis {baseline_rss:.0f} MB")

        pipeline = SegmentationPipeline(ModelRegistry().get(args.model), device=args.device)
        _ = pipeline.model  # load once, as the worker does at start-up
        timings: dict[str, float] = {}
        started = time.perf_counter()
        series = load_series(files)
        timings["load + decode + volume"] = time.perf_counter() - started
        findings = pipeline.run(series.volume)
        for stage, seconds in findings.extra["timings"].items():
            timings[stage] = seconds
        total = sum(timings.values())
        print(f"device: {findings.extra['device']}")
        for stage, seconds in timings.items():
            print(f"  {stage:24s} {seconds:7.2f} s")
        print(f"  {'total':24s} {total:7.2f} s   (target < 30 s on the 2-core CPU)")
        rss = peak_rss_mb()
        print(f"peak RSS {rss:.0f} MB = {rss / raw_mb:.2f} x the raw volume (target < 4 x); "
              f"{(rss - baseline_rss) / raw_mb:.2f} x above the process's RSS before analysis")
        present = {m.name: round(m.volume_ml, 1) for m in findings.measurements if m.lesion_index is None}
        print(f"labels found (mL): {present}; scores: {findings.scores}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
