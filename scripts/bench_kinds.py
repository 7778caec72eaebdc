#!/usr/bin/env python3
"""Every pipeline kind on the same CT: load time, analysis time and peak memory.

One 512 x 512 x 300 phantom CT (0.7 x 0.7 x 1 mm) is written as a DICOM series once; then each
kind runs in its own child process (so one kind's memory does not count in another's), built
the way the node builds it from a configuration: ``model`` (ct-organs, TorchScript), ``model``
with the ONNX export of the same network (the same card otherwise), ``monai-bundle`` (the
phantom spleen bundle), ``nnunet`` (the phantom nnU-Net model), ``command`` (the NIfTI test
module under mercure's contract) and ``classical``. Load: building the pipeline and loading its
weights (a first run of a one-slice-thick volume pays any lazy start-up). Analysis: the series'
volume through ``run`` (for ``command``: the module on the files). Peak memory: the child's peak
RSS during the analysis (reset through /proc/self/clear_refs before it) above its RSS when the
analysis starts (series, weights and interpreter loaded); a command module's own process is
not counted (it is reported by the module's host, not this process). CPU unless ``--device cuda``.

The test models (ONNX export, bundle, nnU-Net) are built into .cache/models/ when missing.

    .venv/bin/python scripts/bench_kinds.py [--slices 300] [--size 512] [--kinds model onnx ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
KINDS = ("model", "onnx", "monai-bundle", "nnunet", "command", "classical")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def reset_peak() -> float:
    """Reset this process's peak RSS (Linux: 5 > /proc/self/clear_refs); returns the RSS now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_mb() -> float:
    return _status_mb("VmHWM")


def spec_for(kind: str, device: str) -> dict:
    ct = {"modality": ["CT"]}
    if kind == "model":
        return {"kind": "model", "model": "ct-organs", "device": device}
    if kind == "onnx":
        from scripts.export_onnx import export

        return {"kind": "model", "path": str(export("ct-organs")), "device": device}
    if kind == "monai-bundle":
        from scripts.build_monai_bundle import build

        return {"kind": "monai-bundle", "path": str(build()), "device": device, "domain": ct}
    if kind == "nnunet":
        from scripts.build_nnunet_model import ROOT, model_folder

        if not (model_folder(ROOT) / "fold_0" / "checkpoint_final.pth").exists():
            subprocess.run([sys.executable, str(REPO / "scripts" / "build_nnunet_model.py")], check=True, stdout=subprocess.DEVNULL)
        return {"kind": "nnunet", "path": str(model_folder(ROOT)), "device": device, "domain": ct}
    if kind == "command":
        return {"kind": "command", "command": [sys.executable, str(REPO / "tests" / "modules" / "nifti_module.py")],
                "name": "nifti-module", "domain": ct}
    return {"kind": "classical"}


def one(kind: str, series: Path, device: str) -> dict:
    """Runs in a child: build, load, analyse; the figures as a dict."""
    import numpy as np

    from ai.types import Volume
    from dicom_node.config import PipelineSpec
    from dicom_node.pipelines.build import build_pipeline
    from dicom_node.pipelines.command import CommandPipeline
    from dicom_node.storage.volume import load_series

    files = sorted(series.iterdir())
    source = load_series(files)
    spec = PipelineSpec.model_validate(spec_for(kind, device))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = build_pipeline(spec, name=kind, work_root=Path(tmp) / "work")
        if not isinstance(pipeline, CommandPipeline):  # load the weights (and any lazy start) on a thin slab
            slab = source.volume.voxels[:16, :64, :64]
            pipeline.run(Volume(np.ascontiguousarray(slab), source.volume.spacing, source.volume.origin, source.volume.direction))
        load = time.perf_counter() - started
        before = reset_peak()  # the series' decoding and the load's own peaks do not count
        started = time.perf_counter()
        if isinstance(pipeline, CommandPipeline):
            findings = pipeline.run_series(source, files, "bench", keep=Path(tmp) / "kept").findings
        else:
            findings = pipeline.run(source.volume)
        seconds = time.perf_counter() - started
    found = sorted({m.name for m in findings.measurements if m.kind == "label"}) if findings else []
    if isinstance(pipeline, CommandPipeline):  # the module's own process: its peak, as the kernel kept it
        import resource

        found.append(f"(module's own peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB)")
    return {"kind": kind, "load_s": round(load, 2), "analysis_s": round(seconds, 2),
            "peak_mb_above_series": round(peak_mb() - before), "found": found}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--series", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.series, args.device)))
        return 0
    from ai.phantom import make_phantom
    from dicom_node.tools.synthetic import write_volume_series

    root = Path(tempfile.mkdtemp(prefix="bench-kinds-"))
    try:
        phantom = make_phantom(77, shape=(args.slices, args.size, args.size), spacing=(1.0, 0.7, 0.7))
        write_volume_series(phantom.volume, root / "series")
        del phantom
        raw_mb = args.slices * args.size * args.size * 2 / 2**20
        print(f"{args.slices} x {args.size} x {args.size} CT ({raw_mb:.0f} MB of int16 voxels), device {args.device}")
        print(f"{'kind':14s} {'load':>8s} {'analysis':>9s} {'peak MB':>8s}  found")
        for kind in args.kinds:
            result = subprocess.run([sys.executable, __file__, "--one", kind, "--series", str(root / "series"),
                                     "--device", args.device], capture_output=True, text=True, timeout=1800)
            if result.returncode != 0:
                print(f"{kind:14s} failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}")
                continue
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{kind:14s} {row['load_s']:7.2f}s {row['analysis_s']:8.2f}s {row['peak_mb_above_series']:8.0f}  "
                  f"{', '.join(row['found'])}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
