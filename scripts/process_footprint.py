#!/usr/bin/env python3
"""What each of `dicom-node serve`'s processes costs at idle: proportional set size (PSS, the
fair share of shared pages) and whether it has torch, MONAI, nnU-Net or onnxruntime loaded.

Only analysis workers run models; the supervisor and the listener processes must stay small
(under 150 MB PSS each, ARCHITECTURE.md). The node names its processes (``/proc/PID/comm``:
``dn-supervisor``, ``dn-listener-N``, ``dn-worker-N``), so the table says which is which.

    python scripts/process_footprint.py [--config node.yaml] [--settle 20] [--json]

Without --config it writes a node configuration in a temporary folder (the shipped default with
its model pipeline, on a free loopback port) and serves it. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL_LIBRARIES = ("torch", "monai", "nnunetv2", "onnxruntime")
LIMIT_MB = 150.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path) -> Path:
    """The shipped default configuration, on loopback ports and under ``folder``."""
    data = yaml.safe_load((ROOT / "config" / "node.yaml").read_text())
    data["node"].update(host="127.0.0.1", port=free_port())
    data.setdefault("storage", {})["path"] = str(folder / "storage")
    data.setdefault("index", {})["path"] = str(folder / "index.sqlite")
    data.setdefault("audit", {})["path"] = str(folder / "audit.jsonl")
    data.setdefault("web", {}).update(host="127.0.0.1", port=free_port())
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def tree(pid: int) -> list[int]:
    out = [pid]
    for child in children(pid):
        out += tree(child)
    return out


def footprint(pid: int) -> dict[str, object]:
    """PSS in MB and the model libraries whose files this process maps."""
    pss_kb = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss_kb = int(line.split()[1])
    mapped = set()
    torch_mappings = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        segments = Path(parts[5]).parts
        for library in MODEL_LIBRARIES:
            if library in segments:
                mapped.add(library)
                torch_mappings += library == "torch"
    return {"pid": pid, "name": Path(f"/proc/{pid}/comm").read_text().strip(), "pss_mb": round(pss_kb / 1024, 1),
            "model_libraries": sorted(mapped), "torch_mappings": torch_mappings}


def measure(config: Path, settle: float, timeout: float = 120.0) -> list[dict[str, object]]:
    """Start ``serve``, wait until its listeners and workers are up and it has been idle for
    ``settle`` seconds, and measure every process of the tree; the node is stopped after."""
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "serve"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=config.parent)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"serve exited with {proc.returncode}:\n{log.read()[-4000:]}")
                log.seek(0)
                if "listening" in log.read().lower():
                    break
                time.sleep(0.5)
            else:
                log.seek(0)
                raise RuntimeError(f"serve did not report listening within {timeout:.0f} s:\n{log.read()[-4000:]}")
            time.sleep(settle)
            return [footprint(pid) for pid in tree(proc.pid) if Path(f"/proc/{pid}").exists()]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="serve this configuration (default: the shipped one, on free ports)")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds of idle before measuring")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = args.config.resolve() if args.config else write_config(Path(folder))
        rows = measure(config, args.settle)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'pid':>8}  {'process':<16} {'PSS MB':>8}  model libraries (torch mappings)")
        for row in rows:
            libraries = ", ".join(row["model_libraries"]) or "none"  # type: ignore[arg-type]
            print(f"{row['pid']:>8}  {row['name']:<16} {row['pss_mb']:>8}  {libraries} ({row['torch_mappings']})")
    over = [r for r in rows if not str(r["name"]).startswith("dn-worker") and
            (r["model_libraries"] or float(r["pss_mb"]) > LIMIT_MB)]  # type: ignore[arg-type]
    for row in over:
        print(f"over budget: {row['name']} (pid {row['pid']}): {row['pss_mb']} MB, {row['model_libraries']}", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
