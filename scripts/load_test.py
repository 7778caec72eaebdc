#!/usr/bin/env python3
"""Load: 8 concurrent senders of N instances each into ``dicom-node serve``, first with no
analysis running, then while an analysis worker runs the ct-organs model on phantom series that
keep arriving; then more associations than ``node.max_associations`` at once.

Prints per phase: instances sent and acknowledged, lost (acknowledged but not in the index or
not on disk: must be 0), throughput, and C-STORE latency p50/p99/max measured at the senders;
then how many of the extra associations were refused (A-ASSOCIATE-RJ, local limit exceeded) and
that /metrics and the audit trail counted them. Everything on loopback, bounded in count and time.

    .venv/bin/python scripts/load_test.py [--senders 8] [--instances 500] [--max-associations 16]

Exit 0 when nothing was lost and every extra association was refused and counted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import dcmread  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import CTImageStorage, Verification  # noqa: E402

from ai.phantom import make_phantom  # noqa: E402
from dicom_node.net.scu import set_nodelay  # noqa: E402
from dicom_node.tools.orthanc import free_port  # noqa: E402
from dicom_node.tools.synthetic import write_ct_series, write_volume_series  # noqa: E402
from tests.support.peers import PeerProcess, start_node, wait_for  # noqa: E402

SENDER = "LOADSCU"


@dataclass
class Phase:
    name: str
    sent: int = 0
    acknowledged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    lost: list[str] = field(default_factory=list)

    def report(self) -> str:
        lat = sorted(self.latencies)
        p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3) if lat else (lambda q: float("nan"))
        return (f"{self.name:28s} sent {self.sent:5d}  acknowledged {len(self.acknowledged):5d}  failed {len(self.failed):3d}  "
                f"lost {len(self.lost)}  {len(self.acknowledged) / self.seconds:7.0f} inst/s  "
                f"C-STORE p50 {p(0.50):6.1f} ms  p99 {p(0.99):6.1f} ms  max {p(1.0):7.1f} ms")


def node_config(workdir: Path, max_associations: int, web_port: int) -> dict[str, Any]:
    return {
        "node": {"ae_title": "AI_NODE", "host": "127.0.0.1", "max_associations": max_associations, "workers": 2},
        "storage": {"path": str(workdir / "storage"), "min_free_mb": 0},
        "index": {"path": str(workdir / "index.sqlite")},
        "audit": {"path": str(workdir / "audit.jsonl")},
        "peers": [{"name": "load", "ae_title": SENDER, "host": "127.0.0.1", "port": 1}],
        "completion": {"series_stable_seconds": 2, "study_stable_seconds": 4, "sweep_interval_seconds": 0.5},
        # Only the phantom series (Series Description "Synthetic phantom") is analysed.
        "routes": [{"name": "organs", "when": {"attribute": "SeriesDescription", "regex": "phantom", "ignore_case": True},
                    "pipeline": "ct-organs", "destinations": []}],
        "pipelines": {"ct-organs": {"kind": "model", "model": "ct-organs", "device": "cpu"}},
        "results": {"path": str(workdir / "results")},
        "jobs": {"workers": 1},
        "web": {"enabled": True, "port": web_port},
    }


def sender_process(port: int, folder: str) -> tuple[list[str], list[str], list[float]]:
    """One sender (its own process, as a modality is): one association, every request timed.
    Returns (acknowledged SOP Instance UIDs, failed ones, latencies in seconds)."""
    from dicom_node.net.patches import pynetdicom_tuning

    # pynetdicom's own requestor polls with 1 ms sleeps (about 20 C-STOREs a second per
    # association, whatever the receiver): the node's event-driven waits make the sender fast
    # enough that the latency measured is the node's.
    pynetdicom_tuning.install()
    ae = AE(ae_title=SENDER)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    files = sorted(Path(folder).iterdir())
    uids = [str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]
    assoc = ae.associate("127.0.0.1", port, ae_title="AI_NODE")
    if not assoc.is_established:
        return [], uids, []
    set_nodelay(assoc)  # as modalities do (DCMTK: TCP_NODELAY=1): no 40 ms Nagle/delayed-ACK stalls
    acknowledged, failed, latencies = [], [], []
    for path, uid in zip(files, uids):
        started = time.perf_counter()
        status = assoc.send_c_store(path)
        latencies.append(time.perf_counter() - started)
        (acknowledged if "Status" in status and status.Status == 0 else failed).append(uid)
    assoc.release()
    return acknowledged, failed, latencies


def send_load(port: int, folders: list[Path], phase: Phase) -> None:
    """One sender process per folder, all at once."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(len(folders), mp_context=multiprocessing.get_context("spawn")) as pool:
        warm = [pool.submit(time.sleep, 0) for _ in folders]  # processes started before the clock does
        for future in warm:
            future.result()
        started = time.perf_counter()
        futures = [pool.submit(sender_process, port, str(folder)) for folder in folders]
        for future in futures:
            acknowledged, failed, latencies = future.result(timeout=1800)
            phase.acknowledged += acknowledged
            phase.failed += failed
            phase.latencies += latencies
            phase.sent += len(latencies)
        phase.seconds = time.perf_counter() - started


def check_durable(index_path: Path, phase: Phase) -> None:
    """Every acknowledged instance has its row, and its file is on disk."""
    import sqlite3

    db = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True)
    try:
        for uid in phase.acknowledged:
            row = db.execute("SELECT path FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchone()
            if row is None or not Path(row[0]).is_file():
                phase.lost.append(uid)
    finally:
        db.close()


def analysis_running(index_path: Path) -> bool:
    import sqlite3

    db = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT 1 FROM jobs WHERE state = 'running'").fetchone() is not None
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


def over_the_limit(port: int, max_associations: int, extra: int) -> tuple[int, int]:
    """Hold max_associations associations open, then try ``extra`` more: (refused, established).

    The extra requests are sent as bytes and the answer read as bytes, so what is counted is what
    the node sent: A-ASSOCIATE-RJ with result 2 (transient), source 3 (service provider,
    presentation), reason 2 (local limit exceeded)."""
    import socket

    from tests.support.fuzz import associate_rq

    held = []
    for _ in range(max_associations):
        ae = AE(ae_title=SENDER)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="AI_NODE")
        if assoc.is_established:
            held.append(assoc)
    refused = established = 0
    for _ in range(extra):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(associate_rq(calling=SENDER))
            answer = b""
            while len(answer) < 10:
                chunk = sock.recv(10 - len(answer))
                if not chunk:
                    break
                answer += chunk
        if answer[:1] == b"\x03" and answer[7:10] == bytes([2, 3, 2]):
            refused += 1
        elif answer[:1] == b"\x02":
            established += 1
        else:
            print(f"  an extra association got neither A-ASSOCIATE-RJ (local limit) nor -AC: {answer!r}")
    for assoc in held:
        assoc.release()
    return refused, established


def run(workdir: Path, senders: int, instances: int, max_associations: int, log: Any = print) -> dict[str, Any]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    web_port = free_port()
    node: PeerProcess = start_node(workdir / "node", node_config(workdir / "node", max_associations, web_port))
    try:
        index_path = workdir / "node" / "index.sqlite"
        phases = []
        for number, name in enumerate(("without analysis", "with ct-organs running")):
            folders = [write_ct_series(workdir / f"load{number}" / f"s{n}", instances, 64, 64, seed=1000 * number + n)[0].parent
                       for n in range(senders)]
            feeder_stop = threading.Event()
            feeder = None
            if number == 1:  # keep the analysis worker busy the whole phase
                def feed() -> None:
                    k = 0
                    while not feeder_stop.is_set():
                        if not analysis_running(index_path):
                            phantom = make_phantom(300 + k, shape=(48, 128, 128), spacing=(3.0, 2.5, 2.5),
                                                   liver_lesions=(0, 0), lung_nodules=(0, 0))
                            files = write_volume_series(phantom.volume, workdir / "phantoms" / str(k), seed=300 + k)
                            send_load(node.port, [files[0].parent], Phase("feed"))
                            k += 1
                            wait_for(lambda: analysis_running(index_path) or feeder_stop.is_set(), 120, "analysis to start")
                        feeder_stop.wait(0.5)
                feeder = threading.Thread(target=feed, daemon=True)
                feeder.start()
                wait_for(lambda: analysis_running(index_path), 180, "the first analysis job to run")
            phase = Phase(name)
            send_load(node.port, folders, phase)
            if feeder is not None:
                feeder_stop.set()
                feeder.join(timeout=300)
            check_durable(index_path, phase)
            log(phase.report())
            phases.append(phase)
        refused, established = over_the_limit(node.port, max_associations, extra=4)
        time.sleep(1.0)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{web_port}/metrics", timeout=30).text)
                   for s in family.samples}
        counted = samples.get(("dicom_node_associations_total", (("outcome", "rejected"),)), 0)
        audited = sum(1 for line in (workdir / "node" / "audit.jsonl").read_text().splitlines()
                      if json.loads(line).get("outcome") == "rejected")
        log(f"over the limit: {max_associations} held, 4 more tried: {refused} refused (local limit exceeded), "
            f"{established} established; /metrics counted {counted:.0f} rejected, the audit trail {audited}")
        return {"phases": phases, "refused": refused, "established": established, "counted": counted, "audited": audited}
    finally:
        node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--max-associations", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="load-") as folder:
        result = run(Path(folder), args.senders, args.instances, args.max_associations)
    ok = (all(not p.lost and not p.failed and p.sent == args.senders * args.instances for p in result["phases"])
          and result["refused"] == 4
          and result["counted"] >= 4 and result["audited"] >= 4)
    print("OK" if ok else "PROBLEMS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
