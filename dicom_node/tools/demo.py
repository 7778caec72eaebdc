"""``dicom-node demo``: the whole product in one command, on the embedded default.

A phantom CT study is generated, sent by a "PACS" to the AI node, completed, routed, analysed
in a worker process, encoded as SEG + SR and sent back to the PACS. The demo then prints the
measurement table read back from the SR and writes a PNG preview of the SEG over key slices.

The PACS is Orthanc with ``--orthanc`` (when installed), otherwise a second dicom-node that
only stores what it receives. With ``--viewer`` Orthanc gets its DICOMweb plugin and OHIF is
served beside it (viewer.py): the demo prints the study's URL and serves until Ctrl-C.
Everything lives under ``--workdir``; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import highdicom as hd
from pydicom.sr.codedict import codes
from rich.console import Console
from rich.table import Table

from ..config import NodeConfig, parse_config
from ..flow.worker import results_folder
from ..net.scu import send_files
from ..results.preview import preview_png
from ..service.node import Node
from ..storage.volume import load_series
from .orthanc import Orthanc, find_orthanc, free_port, start_orthanc
from .synthetic import write_volume_series
from .viewer import ViewerServer, fetch_ohif, start_viewer_stack

PACS_AE = "DEMO_PACS"
MARKER = ".dicom-node-demo"


def _fresh_workdir(workdir: Path) -> None:
    """Start from an empty folder; only ever delete a folder an earlier demo made."""
    if workdir.exists():
        if not (workdir / MARKER).exists():
            raise SystemExit(f"{workdir} exists and was not made by the demo; choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by dicom-node demo; deleted by the next demo run\n")


def _node_config(workdir: Path, pacs_port: int, pipeline: str) -> NodeConfig:
    return parse_config({
        "node": {"ae_title": "AI_NODE", "host": "127.0.0.1", "port": 0},
        "storage": {"path": str(workdir / "node" / "storage"), "min_free_mb": 64},
        "index": {"path": str(workdir / "node" / "index.sqlite")},
        "audit": {"path": str(workdir / "node" / "audit.jsonl")},
        "peers": [{"name": "pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs_port, "send": True, "receive": True}],
        "completion": {"series_stable_seconds": 3, "study_stable_seconds": 5, "sweep_interval_seconds": 0.5},
        "routes": [{"name": "ct", "match": {"modality": "CT"}, "pipeline": pipeline, "destinations": ["sender"]}],
        "pipelines": {"ct-organs": {"kind": "model", "model": "ct-organs"}, "ct-baseline": {"kind": "classical"}},
        "results": {"path": str(workdir / "node" / "results")},
        "jobs": {"workers": 1, "poll_seconds": 0.2},
        "delivery": {"interval_seconds": 0.5, "retry_base_seconds": 1},
        # The demo's two nodes would both reach for web.port 8090; it shows its results itself.
        "web": {"enabled": False},
    }, "demo")


def _pacs_node_config(workdir: Path) -> NodeConfig:
    """A second node as a plain PACS: stores whatever the AI node sends, routes nothing."""
    return parse_config({
        "node": {"ae_title": PACS_AE, "host": "127.0.0.1", "port": 0},
        "storage": {"path": str(workdir / "pacs" / "storage"), "min_free_mb": 64},
        "index": {"path": str(workdir / "pacs" / "index.sqlite")},
        "audit": {"path": str(workdir / "pacs" / "audit.jsonl")},
        "peers": [{"name": "ai", "ae_title": "AI_NODE", "host": "127.0.0.1", "port": 1, "send": True, "receive": False}],
        "web": {"enabled": False},
    }, "demo-pacs")


def measurement_table(sr: hd.sr.Comprehensive3DSR) -> Table:
    """One row per finding: a segment's volumetric group and its planar twin (same tracking
    UID: the diameter on the key slice, only when the segment is one connected structure) make
    one row; each side of a paired organ and each lesion (planar groups) another."""
    table = Table(title=f"{sr.SeriesDescription}")
    for column in ("structure", "volume (mL)", "mean (HU)", "longest axial diameter (mm)"):
        table.add_column(column, justify="left" if column == "structure" else "right")

    def value(group: Any, *names: Any) -> str:
        for name in names:
            found = group.get_measurements(name=name) if group is not None else []
            if found:
                return f"{found[0].value:.1f}"
        return ""

    planar = sr.content.get_planar_roi_measurement_groups()
    twins = {str(g.tracking_uid): g for g in planar}
    segments = sr.content.get_volumetric_roi_measurement_groups()
    for group in segments:
        table.add_row(str(group.tracking_identifier), value(group, codes.SCT.Volume), value(group, codes.SCT.Mean),
                      value(twins.get(str(group.tracking_uid)), codes.SCT.Diameter))
    segment_uids = {str(g.tracking_uid) for g in segments}
    for group in planar:
        if str(group.tracking_uid) not in segment_uids:
            table.add_row(f"[yellow]{group.tracking_identifier}[/]", value(group, codes.SCT.Volume),
                          value(group, codes.SCT.Mean), value(group, codes.SCT.Diameter, codes.SCT.LongAxis))
    return table


def _wait_for_deliveries(node: Node, timeout: float, console: Console) -> str:
    """Wait until the series is complete and routed at its latest version, every job is done
    and every delivery made; return the key of the newest job (on a slow machine a pause in
    sending can complete a first version of the series early, and a second version follows)."""
    assert node.downstream is not None
    outbox = node.downstream.outbox
    deadline = time.monotonic() + timeout
    with console.status("waiting for completion, analysis and delivery ...") as status:
        while time.monotonic() < deadline:
            rows = outbox.list()
            jobs = node.index.query("SELECT id, key, state, last_error FROM jobs ORDER BY id")
            series = node.index.query("SELECT state, version, routed_version FROM series")
            if any(j["state"] == "dead" for j in jobs):
                raise SystemExit(f"the analysis failed: {next(j['last_error'] for j in jobs if j['state'] == 'dead')}")
            if any(r["state"] == "dead" for r in rows):
                raise SystemExit(f"delivery failed: {next(r['last_error'] for r in rows if r['state'] == 'dead')}")
            settled = series and all(s["state"] == "complete" and s["routed_version"] == s["version"] for s in series)
            if settled and jobs and all(j["state"] == "done" for j in jobs) and rows and \
                    all(r["state"] == "delivered" for r in rows) and {r["job_id"] for r in rows} >= {j["id"] for j in jobs}:
                return str(jobs[-1]["key"])
            state = jobs[-1]["state"] if jobs else "receiving"
            status.update(f"job: {state}; deliveries: {', '.join(r['state'] for r in rows) or 'none yet'}")
            time.sleep(0.3)
    raise SystemExit(f"no result after {timeout:.0f} s (see {node.config.index.path.parent})")


def _serve_viewer(viewer: ViewerServer, study_uid: str, seconds: float | None, console: Console) -> None:
    """Print the study's URL in OHIF and keep serving until Ctrl-C (or ``seconds``)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"[bold green]Open the study in OHIF:[/] {viewer.study_url(study_uid)}", highlight=False)
    console.print("Double-click the SEG or SR thumbnail to load it; Ctrl-C stops the viewer, Orthanc and the node.")
    stop.wait(seconds)


def run_demo(args: argparse.Namespace, console: Console) -> int:
    workdir: Path = args.workdir
    _fresh_workdir(workdir)
    use_orthanc = bool(args.orthanc or args.viewer)
    if use_orthanc and find_orthanc() is None:
        if args.viewer:
            raise SystemExit("--viewer needs Orthanc and its DICOMweb plugin: apt-get install orthanc orthanc-dicomweb")
        console.print("[yellow]Orthanc is not installed (apt-get install orthanc); a second dicom-node plays the PACS[/]")
        use_orthanc = False
    dist = None
    if args.viewer:
        with console.status("fetching the OHIF viewer (once; npm pack @ohif/app) ..."):
            dist = fetch_ohif()

    from ai.phantom import make_phantom

    started = time.perf_counter()
    phantom = make_phantom(args.seed, shape=(96, 256, 256), spacing=(2.5, 1.4, 1.4), liver_lesions=(1, 2), lung_nodules=(1, 1))
    files = write_volume_series(phantom.volume, workdir / "phantom", seed=args.seed)
    console.print(f"Phantom CT: {len(files)} slices of 256x256 in {workdir / 'phantom'}")

    pacs_node: Node | None = None
    orthanc: Orthanc | None = None
    viewer: ViewerServer | None = None
    pacs_port = free_port() if use_orthanc else 0
    if not use_orthanc:
        pacs_node = Node(_pacs_node_config(workdir))
        pacs_node.start()
        pacs_port = pacs_node.port
    node = Node(_node_config(workdir, pacs_port, args.pipeline))
    node.start()
    try:
        if use_orthanc:
            modalities = {"ainode": ["AI_NODE", "127.0.0.1", node.port]}
            if dist is not None:
                orthanc, viewer = start_viewer_stack(workdir / "orthanc", dist, ae_title=PACS_AE, dicom_port=pacs_port,
                                                     modalities=modalities)
            else:
                orthanc = start_orthanc(workdir / "orthanc", ae_title=PACS_AE, port=pacs_port, modalities=modalities)
            for path in files:
                orthanc.upload(path)
            study = orthanc.study_id(str(load_series(files[:1]).datasets[0].StudyInstanceUID))
            orthanc.call("POST", "/modalities/ainode/store", {"Resources": [study], "Synchronous": True})
            console.print(f"Orthanc (PACS, {orthanc.base_url}) sent the study to AI_NODE on port {node.port}")
        else:
            report = send_files(PACS_AE, node.config.peer("pacs").model_copy(update={"port": node.port, "ae_title": "AI_NODE"}),
                                files)
            console.print(f"{PACS_AE} sent {report.sent} of {len(files)} instances to AI_NODE on port {node.port}")
        key = _wait_for_deliveries(node, args.timeout, console)
        folder = results_folder(node.config.results.path, key)
        seg = hd.seg.segread(folder / "seg-binary.dcm")
        sr = hd.sr.srread(folder / "sr-binary.dcm")
        console.print(measurement_table(sr))
        source = load_series(files)
        drawn = preview_png(source, seg, workdir / "preview.png")
        where = orthanc.base_url + "/app/explorer.html" if orthanc else str(workdir / "pacs" / "storage")
        console.print(f"SEG ({seg.NumberOfFrames} frames, {len(seg.SegmentSequence)} segments) and SR delivered to the PACS "
                      f"({where}) in {time.perf_counter() - started:.1f} s")
        console.print(f"Preview of slices {drawn}: {workdir / 'preview.png'}")
        if viewer is not None:
            node.stop()  # the analysis is done; the viewer reads Orthanc
            _serve_viewer(viewer, str(source.datasets[0].StudyInstanceUID), args.serve_seconds, console)
    finally:
        if viewer is not None:
            viewer.stop()
        node.stop()
        if pacs_node is not None:
            pacs_node.stop()
        if orthanc is not None:
            orthanc.stop()
    return 0
