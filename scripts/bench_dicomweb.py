#!/usr/bin/env python3
"""DICOMweb and query/retrieve benchmark: the node's STOW-RS endpoint and its retrievals, each
next to a reference run on the same study, in the same process, alternated round by round.

Ingest (a 300 x 512x512 int16 CT study, about 157 MB, one request or association):

  node C-STORE   DCMTK ``storescu`` into ``dicom-node serve`` (its shipped durability: fsync)
  node STOW-RS   the same study as one multipart/related POST to the node's /dicomweb/studies
  Orthanc STOW   the same body POSTed to Orthanc's DICOMweb plugin (fsync per file)

  targets: node STOW-RS >= 0.8 x node C-STORE, and >= 1.0 x Orthanc's STOW-RS.

Retrieval of the same study held by Orthanc (the source archive):

  C-MOVE   the node asks Orthanc to move it to the node's own listener, versus DCMTK ``movescu``
           asking Orthanc to move it to DCMTK ``storescp``
  C-GET    the node's C-GET (each instance fsynced and indexed on arrival), versus DCMTK
           ``getscu`` writing the files to a folder
  WADO-RS  the node's WADO-RS retrieval (each instance parsed, written, fsynced, indexed),
           versus a plain download of the same multipart answer to one file (what the network
           and Orthanc allow)

Prints seconds and MB/s per run (medians over rounds) and the node's ratio to each reference
(the median of per-round ratios; above 1 means the node is faster).

    .venv/bin/python scripts/bench_dicomweb.py [--rounds 2] [--slices 300] [--only ingest|retrieve]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom  # noqa: E402

from dicom_node.config import parse_config  # noqa: E402
from dicom_node.flow.retrieval import retrieve  # noqa: E402
from dicom_node.net.query_retrieve import move  # noqa: E402
from dicom_node.storage.index import Index  # noqa: E402
from dicom_node.storage.store import InstanceStore  # noqa: E402
from dicom_node.tools.synthetic import write_ct_series  # noqa: E402
from tests.support.peers import dcmtk_env, free_port, start_node, start_storescp, system_binary, wait_for_port  # noqa: E402
from tests.support.qr_peers import start_qr_orthanc  # noqa: E402

TOKEN = "7d3b9f1e5a2c4e6a8b0d1f3a5c7e9b2d"
BOUNDARY = "bench-boundary-0f3c6a1e"


def multipart(files: list[Path]) -> bytes:
    parts = [b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f.read_bytes() + b"\r\n"
             for f in files]
    return b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n"


def post(url: str, body: bytes, token: str | None = None) -> float:
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    started = time.perf_counter()
    response = requests.post(url, data=body, headers=headers, timeout=600)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{url}: HTTP {response.status_code} {response.text[:300]}")
    return elapsed


def node_config(work: Path, orthanc: Any | None) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "token").write_text(TOKEN)
    peers: list[dict[str, Any]] = [{"name": "bench", "ae_title": "BENCH", "host": "127.0.0.1", "port": 1},
                                   {"name": "uploader", "stow": True, "stow_token_file": str(work / "token")}]
    if orthanc is not None:
        peers.append({"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.port,
                      "query": True})
    return {"node": {"ae_title": "AI_NODE"}, "storage": {"path": str(work / "storage")},
            "index": {"path": str(work / "index.sqlite")}, "audit": {"path": str(work / "audit.jsonl")},
            "web": {"enabled": True, "port": free_port()}, "peers": peers,
            "completion": {"series_stable_seconds": 3600, "study_stable_seconds": 3600}}


def storescu(port: int, ae: str, folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run([system_binary("storescu"), "+sd", "-aet", "BENCH", "-aec", ae, "127.0.0.1", str(port), str(folder)],
                   check=True, capture_output=True, env=dcmtk_env(), timeout=600)
    return time.perf_counter() - started


def ingest_round(root: Path, folder: Path, body: bytes) -> dict[str, float]:
    """One round: the node by C-STORE, the node by STOW-RS (fresh nodes), Orthanc by STOW-RS."""
    times: dict[str, float] = {}
    for name in ("node C-STORE", "node STOW-RS"):
        work = root / name.replace(" ", "-")
        config = node_config(work, None)
        node = start_node(work, config)
        try:
            web = config["web"]["port"]
            wait_for_port(web, node.proc)
            times[name] = storescu(node.port, "AI_NODE", folder) if name == "node C-STORE" else \
                post(f"http://127.0.0.1:{web}/dicomweb/studies", body, TOKEN)
        finally:
            node.stop()
            shutil.rmtree(work, ignore_errors=True)
    orthanc = start_qr_orthanc(root / "orthanc", "AI_NODE", 1, dicomweb=True)
    try:
        times["Orthanc STOW-RS"] = post(f"{orthanc.base_url}/dicom-web/studies", body)
    finally:
        orthanc.stop()
        shutil.rmtree(root / "orthanc", ignore_errors=True)
    return times


def retrieve_round(root: Path, files: list[Path], study: str) -> dict[str, float]:
    """One round against one fresh Orthanc holding the study: each way of retrieving it, the
    node's and the reference's, into fresh receivers."""
    times: dict[str, float] = {}
    orthanc = start_qr_orthanc(root / "orthanc", "AI_NODE", 1, dicomweb=True)  # the node's port is set once it runs
    storescp = start_storescp(root / "storescp", bit_preserving=True)
    orthanc.call("PUT", "/modalities/storescp", {"AET": storescp.ae_title, "Host": "127.0.0.1", "Port": storescp.port})
    try:
        for path in files:
            orthanc.upload(path)
        # C-MOVE: to the node's listener (a `serve` subprocess) / DCMTK movescu to storescp.
        work = root / "node-move"
        config = node_config(work, orthanc)
        node = start_node(work, config)
        orthanc.call("PUT", "/modalities/ainode", {"AET": "AI_NODE", "Host": "127.0.0.1", "Port": node.port})
        try:
            parsed = parse_config(config, "bench")
            started = time.perf_counter()
            report = move("BENCH", parsed.peer("pacs"), study, "AI_NODE", 600)
            times["node C-MOVE"] = time.perf_counter() - started
            assert report.completed == len(files), report
        finally:
            node.stop()
        started = time.perf_counter()
        subprocess.run([system_binary("movescu"), "-S", "-aet", "BENCH", "-aec", orthanc.ae_title, "-aem",
                        storescp.ae_title, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                        "127.0.0.1", str(orthanc.port)], check=True, capture_output=True, env=dcmtk_env(), timeout=600)
        times["movescu"] = time.perf_counter() - started
        # C-GET and WADO-RS: into a store and index in this process.
        for name, how in (("node C-GET", "get"), ("node WADO-RS", None)):
            work = root / name.replace(" ", "-")
            config = node_config(work, orthanc)
            if how is None:
                config["peers"][-1] = {"name": "pacs", "query": True, "dicomweb": {"url": f"{orthanc.base_url}/dicom-web"}}
            else:
                config["peers"][-1]["retrieve"] = how
            parsed = parse_config(config, "bench")
            store, index = InstanceStore(parsed.storage.path), Index(parsed.index.location)
            try:
                report = retrieve(parsed, parsed.peer("pacs"), study, store, index)
                times[name] = report.seconds
                assert report.stored == len(files), report
            finally:
                index.close()
                shutil.rmtree(work, ignore_errors=True)
        out = root / "getscu"
        out.mkdir()
        started = time.perf_counter()
        subprocess.run([system_binary("getscu"), "-S", "-aet", "BENCH", "-aec", orthanc.ae_title, "-od", str(out),
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1",
                        str(orthanc.port)], check=True, capture_output=True, env=dcmtk_env(), timeout=600)
        times["getscu"] = time.perf_counter() - started
        started = time.perf_counter()
        with requests.get(f"{orthanc.base_url}/dicom-web/studies/{study}", stream=True, timeout=600,
                          headers={"Accept": 'multipart/related; type="application/dicom"'}) as response, \
                open(root / "wado.bin", "wb") as sink:
            for chunk in response.iter_content(2**20):
                sink.write(chunk)
        times["WADO-RS download"] = time.perf_counter() - started
    finally:
        storescp.stop()
        orthanc.stop()
        for name in ("orthanc", "storescp", "getscu", "node-move", "wado.bin"):
            target = root / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    return times


def report(title: str, rounds: list[dict[str, float]], size_mb: float, pairs: list[tuple[str, str, float]]) -> None:
    print(f"\n{title} ({len(rounds)} round(s), {size_mb:.0f} MB)")
    for name in rounds[0]:
        median = statistics.median(r[name] for r in rounds)
        print(f"  {name:18s} {median:7.2f} s  {size_mb / median:7.1f} MB/s")
    for node, reference, target in pairs:
        ratios = [r[reference] / r[node] for r in rounds]
        verdict = "" if not target else ("  (target >= %.1f: %s)" % (target, "met" if statistics.median(ratios) >= target
                                                                      else "NOT met"))
        print(f"  {node} / {reference}: {statistics.median(ratios):.2f}x "
              f"[{', '.join(f'{x:.2f}' for x in ratios)}]{verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--only", choices=["ingest", "retrieve"])
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    try:
        files = write_ct_series(root / "study", args.slices, rows=512, columns=512, seed=42)
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        if args.only in (None, "ingest"):
            body = multipart(files)
            rounds = []
            for number in range(args.rounds):
                rounds.append(ingest_round(root / f"ingest{number}", root / "study", body))
            report("Ingest", rounds, size_mb, [("node STOW-RS", "node C-STORE", 0.8),
                                               ("node STOW-RS", "Orthanc STOW-RS", 1.0)])
            del body
        if args.only in (None, "retrieve"):
            rounds = [retrieve_round(root / f"retrieve{n}", files, study) for n in range(args.rounds)]
            report("Retrieve", rounds, size_mb, [("node C-MOVE", "movescu", 0.0), ("node C-GET", "getscu", 0.0),
                                                 ("node WADO-RS", "WADO-RS download", 0.0)])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
