#!/usr/bin/env python3
"""Ingest benchmark: how fast does the node take studies, next to DCMTK storescp and Orthanc?

The same synthetic CT studies are sent with DCMTK ``storescu`` (TCP_NODELAY=1 for every DCMTK
process) to three receivers, each started fresh for every run and alternated A B C A B C in one
process, so all three see the same machine state:

  storescp  DCMTK ``storescp +B`` (bit-preserving, no fsync): the physical reference
  orthanc   Orthanc 1.10 with its defaults (fsync per file): the durable peer a hospital picks
  node      ``dicom-node serve`` with the shipped default durability (fsync)

Workloads: a 300 x 512x512 int16 study (one association), a 1000 x 64x64 study (per-message
cost), and 4 concurrent associations of 250 64x64 instances each. Prints instances/s and MB/s
(medians over rounds), each receiver's CPU per instance, and the node's ratio to each
reference: the median of the ratios taken within each round, the per-round ratios to Orthanc
beside it. Received files are deleted only at the end (about 1 GB with the default 2 rounds).

With ``--tls`` a fourth receiver, ``node-tls``, is the same node taking the same studies on its
DICOM TLS port (``storescu +tls``, certificates made for the run, TLS 1.2 with DCMTK 3.6.7's
BCP 195 profile), and the TLS cost is printed as node-tls / node.

    .venv/bin/python scripts/bench_ingest.py [--rounds 2] [--quick] [--only big|small|concurrent] [--tls]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.tools.synthetic import write_ct_series  # noqa: E402
from tests.support.peers import PeerProcess, dcmtk_env, start_node, start_orthanc, start_storescp, system_binary, wait_for_port

SENDER_AE = "BENCH"


def send_folders(peer: PeerProcess, folders: list[Path]) -> float:
    """Send each folder over its own storescu association, all at once; return seconds."""
    storescu = system_binary("storescu")
    started = time.perf_counter()
    tls = list(getattr(peer, "extra", {}).get("storescu_tls", []))
    procs = [
        subprocess.Popen([storescu, *tls, "+sd", "-aet", SENDER_AE, "-aec", peer.ae_title, "127.0.0.1", str(peer.port),
                          str(folder)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dcmtk_env())
        for folder in folders
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    elapsed = time.perf_counter() - started
    for proc, err in zip(procs, errors):
        if proc.returncode != 0:
            raise RuntimeError(f"storescu to {peer.name} failed: {err.decode()[-500:]}")
    return elapsed


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its descendants so far, from /proc (0 where
    there is no /proc): how much work a receiver did, independent of the machine's drift."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        child = int(entry.parent.name)
        parents[child] = int(fields[1])
        times[child] = (int(fields[11]) + int(fields[12])) / tick
    wanted = {pid}
    while more := {child for child, parent in parents.items() if parent in wanted} - wanted:
        wanted |= more
    return sum(times.get(member, 0.0) for member in wanted)


def node_config(workdir: Path) -> dict[str, object]:
    return {
        "node": {"ae_title": "AI_NODE", "host": "127.0.0.1"},
        "storage": {"path": str(workdir / "storage"), "min_free_mb": 0},
        "index": {"path": str(workdir / "index.sqlite")},
        "audit": {"path": str(workdir / "audit.jsonl")},
        "peers": [{"name": "bench", "ae_title": SENDER_AE, "host": "127.0.0.1", "port": 1}],
        "completion": {"series_stable_seconds": 3600, "study_stable_seconds": 3600},
    }


def start_tls_node(workdir: Path, pki: Path) -> PeerProcess:
    """The node with DICOM TLS; the returned peer's port is the TLS port, with storescu's TLS options."""
    from dataclasses import replace

    from dicom_node.tools.orthanc import free_port
    from tests.support.certs import Authority

    authority = Authority("bench", pki)
    node, sender = authority.issue("node.bench", ips=["127.0.0.1"]), authority.issue("sender.bench", dns=["sender.bench"])
    tls_port = free_port()
    config = node_config(workdir)
    config["node"] = {**config["node"], "tls": {"port": tls_port, "certificate": str(node.certificate),  # type: ignore[dict-item]
                                                "private_key": str(node.private_key), "ca_certificates": str(authority.pem)}}
    config["peers"] = [{"name": "bench", "ae_title": SENDER_AE, "host": "127.0.0.1", "port": 1, "tls": True,
                        "tls_identity": "sender.bench"}]
    peer = start_node(workdir, config)
    wait_for_port(tls_port, peer.proc)
    return replace(peer, port=tls_port, extra={**peer.extra, "storescu_tls": [
        "+tls", str(sender.private_key), str(sender.certificate), "+cf", str(authority.pem)]})


RECEIVERS: dict[str, Callable[[Path], PeerProcess]] = {
    "storescp": lambda d: start_storescp(d, ae_title="STORESCP"),
    "orthanc": lambda d: start_orthanc(d, ae_title="ORTHANC"),
    "node": lambda d: start_node(d, node_config(d)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smaller studies, for a smoke run")
    parser.add_argument("--only", choices=["big", "small", "concurrent"], action="append",
                        help="run only these workloads (repeatable); default all three")
    parser.add_argument("--tls", action="store_true", help="also the node on its DICOM TLS port (node-tls)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        big_n, small_n, conc_n = (60, 200, 50) if args.quick else (300, 1000, 250)
        print(f"generating studies in {root} ...", flush=True)
        chosen = set(args.only or ["big", "small", "concurrent"])
        workloads: dict[str, list[Path]] = {}
        if "big" in chosen:
            write_ct_series(root / "big", big_n, 512, 512, seed=1)
            workloads[f"{big_n} x 512x512"] = [root / "big"]
        if "small" in chosen:
            write_ct_series(root / "small", small_n, 64, 64, seed=2)
            workloads[f"{small_n} x 64x64"] = [root / "small"]
        if "concurrent" in chosen:
            for i in range(4):
                write_ct_series(root / f"conc{i}", conc_n, 64, 64, seed=10 + i)
            workloads[f"4 x {conc_n} x 64x64 concurrent"] = [root / f"conc{i}" for i in range(4)]
        os.sync()
        if args.tls:
            RECEIVERS["node-tls"] = lambda d: start_tls_node(d, root / "pki")

        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for number, (name, folders) in enumerate(workloads.items()):
            files = [f for folder in folders for f in folder.iterdir()]
            count, size = len(files), sum(f.stat().st_size for f in files)
            for round_ in range(args.rounds):
                for receiver, start in RECEIVERS.items():
                    workdir = root / "runs" / f"{number}-{receiver}-{round_}"
                    peer = start(workdir)
                    try:
                        cpu_before = tree_cpu_seconds(peer.proc.pid)
                        seconds = send_folders(peer, folders)
                        cpu = tree_cpu_seconds(peer.proc.pid) - cpu_before
                    finally:
                        peer.stop()
                    # What a receiver left unwritten (storescp does not fsync) is written out
                    # now, untimed, not while the next receiver is measured.
                    os.sync()
                    # The run's files stay until the end: deleting thousands of files just
                    # before the next receiver starts slows that receiver's file creation (ext4
                    # skips inodes freed in the last 5-30 s; without a journal, as on the CI
                    # machine, it scans past each one: perf showed 40 % of a process's time in
                    # find_inode_bit / recently_deleted), which measured the order of the runs.
                    results.setdefault((name, receiver), []).append((count / seconds, size / seconds / 2**20))
                    print(f"  {name:28s} {receiver:9s} round {round_ + 1}: {count / seconds:8.0f} inst/s, "
                          f"receiver CPU {cpu / count * 1e3:5.2f} ms/instance", flush=True)

        # Ratios are taken within each round (the three runs of a round are seconds apart) and
        # their median reported: this machine's speed drifts by a quarter over minutes, which a
        # ratio of medians taken across rounds would mix in.
        print()
        print(f"{'workload':30s} {'receiver':9s} {'inst/s':>8s} {'MB/s':>8s}   node/storescp  node/orthanc   node/orthanc per round")
        for name in workloads:
            runs = {r: results[(name, r)] for r in RECEIVERS}
            for receiver in RECEIVERS:
                inst = statistics.median(x[0] for x in runs[receiver])
                mbs = statistics.median(x[1] for x in runs[receiver])
                ratios = ""
                if receiver == "node":
                    to_storescp = statistics.median(n[0] / s[0] for n, s in zip(runs["node"], runs["storescp"]))
                    per_round = [n[0] / o[0] for n, o in zip(runs["node"], runs["orthanc"])]
                    ratios = (f"   {to_storescp:13.2f}  {statistics.median(per_round):12.2f}   "
                              + " ".join(f"{r:.2f}" for r in per_round))
                print(f"{name:30s} {receiver:9s} {inst:8.0f} {mbs:8.1f}{ratios}")
        if args.tls:
            print()
            for name in workloads:
                per_round = [t[0] / n[0] for t, n in zip(results[(name, "node-tls")], results[(name, "node")])]
                print(f"TLS cost, {name:30s} node-tls/node {statistics.median(per_round):.2f} "
                      f"(per round {' '.join(f'{r:.2f}' for r in per_round)})")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
