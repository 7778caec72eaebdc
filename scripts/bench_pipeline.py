#!/usr/bin/env python3
"""Pipeline benchmark: one 512 x 512 x 300 phantom CT through every analysis stage.

The phantom is written as a DICOM series (int16, one file per slice), then timed stage by
stage as the node runs it: load + decode (pydicom reading the files), volume (sorting,
geometry, HU), preprocess, inference, post-process, measurements, then SEG and SR encoding
(highdicom). Then end to end: Orthanc sends the series to a node, whose worker analyses it
and sends SEG + SR back; the figure is seconds from "series complete" to both in Orthanc. Peak RSS of this process is
reported against the raw volume size (512 x 512 x 300 x 2 bytes). Runs on CUDA when torch sees
one (mixed precision), else on the CPU.

    .venv/bin/python scripts/bench_pipeline.py [--slices 300] [--device auto] [--no-e2e] [--uncertainty-map] [--onnx]
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import dcmread  # noqa: E402

from ai.phantom import make_phantom  # noqa: E402
from ai.pipeline import SegmentationPipeline  # noqa: E402
from ai.registry import ModelRegistry  # noqa: E402
from dicom_node.config import parse_config  # noqa: E402
from dicom_node.results import ResultSettings, build_report, build_segmentation  # noqa: E402
from dicom_node.service.node import Node  # noqa: E402
from dicom_node.storage.volume import load_series  # noqa: E402
from dicom_node.tools.orthanc import free_port, start_orthanc  # noqa: E402
from dicom_node.tools.synthetic import write_volume_series  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def end_to_end(files: list[Path], model: str, root: Path) -> None:
    """Orthanc (the PACS) C-STOREs the series to a node, which analyses it in its worker and
    sends the SEG and SR back; report seconds from "series complete" to both in Orthanc."""
    orthanc_port = free_port()
    config = parse_config({
        "node": {"port": 0},
        "storage": {"path": str(root / "node" / "storage"), "min_free_mb": 0},
        "index": {"path": str(root / "node" / "index.sqlite")},
        "audit": {"path": str(root / "node" / "audit.jsonl")},
        "peers": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port}],
        "completion": {"series_stable_seconds": 2, "study_stable_seconds": 4, "sweep_interval_seconds": 0.2},
        "routes": [{"name": "ct", "match": {"modality": "CT"}, "pipeline": "p", "destinations": ["sender"]}],
        "pipelines": {"p": {"kind": "model", "model": model}},
        "results": {"path": str(root / "node" / "results")},
        "jobs": {"workers": 1, "poll_seconds": 0.1, "lease_seconds": 300},
        "delivery": {"interval_seconds": 0.1},
    }, "bench")
    node = Node(config)
    node.start()
    orthanc = start_orthanc(root / "orthanc", port=orthanc_port, modalities={"ainode": ["AI_NODE", "127.0.0.1", node.port]})
    try:
        for path in files:
            orthanc.upload(path)
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        study = orthanc.study_id(study_uid)
        started = time.perf_counter()
        orthanc.call("POST", "/modalities/ainode/store", {"Resources": [study], "Synchronous": True})
        print(f"end to end: Orthanc sent {len(files)} instances to the node in {time.perf_counter() - started:.1f} s")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            modalities = {s["MainDicomTags"].get("Modality") for s in orthanc.series_of_study(study_uid)}
            if {"SEG", "SR"} <= modalities:
                break
            time.sleep(0.1)
        else:
            raise SystemExit("no results in Orthanc after 600 s")
        arrived = time.time()
        series = node.index.query("SELECT completed_at FROM series WHERE modality = 'CT'")[0]
        job = node.index.query("SELECT created_at, finished_at FROM jobs")[0]
        sent = node.index.query("SELECT max(delivered_at) AS t FROM deliveries")[0]["t"]
        complete = series["completed_at"]
        print(f"  series complete -> job done {job['finished_at'] - complete:6.1f} s (worker: load, model, encode, write)")
        print(f"  job done -> SEG + SR stored in Orthanc {sent - job['finished_at']:6.1f} s (outbox + C-STORE)")
        print(f"  series complete -> both results in Orthanc {arrived - complete:6.1f} s (target < 45 s; "
              f"includes the poll of Orthanc's REST API, 0.1 s)")
    finally:
        node.stop()
        orthanc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="ct-organs")
    parser.add_argument("--no-e2e", dest="e2e", action="store_false",
                        help="skip the end-to-end run through Orthanc and a node")
    parser.add_argument("--onnx", action="store_true",
                        help="also run the model exported to ONNX (scripts/export_onnx.py) on the same volume")
    parser.add_argument("--uncertainty-map", action="store_true",
                        help="also compute and encode the per-voxel uncertainty Parametric Map")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # internal: write the series and exit
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.ERROR)

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

        pipeline = SegmentationPipeline(ModelRegistry().get(args.model), device=args.device, uncertainty=args.uncertainty_map)
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
        print(f"peak memory of the analysis (peak RSS above the RSS before it: torch, the model and the "
              f"interpreter, {baseline_rss:.0f} MB) {rss - baseline_rss:.0f} MB = {(rss - baseline_rss) / raw_mb:.2f} x the raw "
              f"volume (target < 4 x); whole process {rss:.0f} MB = {rss / raw_mb:.2f} x")
        present = {m.name: round(m.volume_ml, 1) for m in findings.measurements if m.kind == "label"}
        print(f"labels found (mL): {present}; scores: {findings.scores}")

        settings = ResultSettings()
        started = time.perf_counter()
        seg = build_segmentation(series, findings, "bench", settings)
        seg_seconds = time.perf_counter() - started
        started = time.perf_counter()
        build_report(series, findings, seg, "bench", settings)
        sr_seconds = time.perf_counter() - started
        frames = seg.NumberOfFrames if seg is not None else 0
        print(f"encode SEG ({frames} frames, BINARY, empty frames kept) {seg_seconds:5.2f} s; SR {sr_seconds:5.2f} s; "
              f"together {seg_seconds + sr_seconds:.2f} s (target < 2 s)")
        if args.onnx:
            from ai.registry import ModelCard
            from scripts.export_onnx import export

            onnx = SegmentationPipeline(ModelCard.from_folder(export(args.model)), device=args.device)
            started = time.perf_counter()
            _ = onnx.model
            load_seconds = time.perf_counter() - started
            other = onnx.run(series.volume)
            equal = float((other.label_map == findings.label_map).mean())
            stages = ", ".join(f"{k} {v:.2f} s" for k, v in other.extra["timings"].items())
            print(f"ONNX ({', '.join(onnx.model.providers)}): session {load_seconds:.2f} s; {stages}; "
                  f"total {sum(other.extra['timings'].values()):.2f} s against TorchScript "
                  f"{sum(findings.extra['timings'].values()):.2f} s; label maps {100 * equal:.3f} % equal; "
                  f"peak RSS above the start now {peak_rss_mb() - baseline_rss:.0f} MB")
        if args.uncertainty_map:
            from dicom_node.results.parametric_map import build_uncertainty_map

            started = time.perf_counter()
            pm = build_uncertainty_map(series, findings, "bench", settings)
            pm_seconds = time.perf_counter() - started
            size = len(pm.FloatPixelData) / 2**20 if pm is not None else 0.0
            print(f"encode uncertainty Parametric Map {pm_seconds:5.2f} s ({size:.0f} MB of float pixel data); "
                  f"peak RSS above the RSS before the analysis now {peak_rss_mb() - baseline_rss:.0f} MB")
        if args.e2e:
            end_to_end(files, args.model, root)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
