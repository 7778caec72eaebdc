#!/usr/bin/env python3
"""Longer seeded fuzzing of the listener than CI runs (tests/net/test_fuzz.py: 2000 cases, four at a time): a
node of two listener processes on loopback, COUNT hostile connections from tests/support/fuzz.py,
a C-ECHO every 100 cases timed, and at the end what the node did with each kind, its memory
growth, the last C-ECHO and whether its log holds a traceback. Stops by itself.

    .venv/bin/python scripts/fuzz_listener.py [--count 5000] [--seed 1]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import config_dict  # noqa: E402
from tests.net.patches.test_p_data import _tree_rss_mb  # noqa: E402
from tests.net.test_fuzz import _echo_seconds  # noqa: E402
from tests.support.fuzz import cases, run_case  # noqa: E402
from tests.support.peers import start_node  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fuzz-listener-"))
    config = config_dict(root / "node")
    config["node"]["workers"] = 2
    peer = start_node(root / "node", config)
    try:
        _echo_seconds(peer.port)
        before = _tree_rss_mb(peer.proc.pid)
        outcomes: collections.Counter[str] = collections.Counter()
        slowest_echo = 0.0
        started = time.monotonic()
        for case in cases(args.seed, args.count):
            outcomes[f"{case.kind}: {run_case(peer.port, case)}"] += 1
            if peer.proc.poll() is not None:
                print(f"the node EXITED after case {case.number} ({case.kind}: {case.what}), seed {args.seed}")
                return 1
            if case.number % 100 == 99:
                slowest_echo = max(slowest_echo, _echo_seconds(peer.port, drain=5.0)[0])
        seconds = time.monotonic() - started
        grown = _tree_rss_mb(peer.proc.pid) - before
        echo = _echo_seconds(peer.port, drain=5.0)[0]
    finally:
        peer.stop()
    log = (root / "node" / "node.log").read_text(errors="replace")
    print(f"{args.count} hostile connections (seed {args.seed}) in {seconds:.0f} s; node memory {grown:+.0f} MB; "
          f"C-ECHO every 100 cases at most {slowest_echo * 1000:.0f} ms, after {echo * 1000:.0f} ms; "
          f"tracebacks in the log: {log.count('Traceback')}; ERROR lines: {log.count(' ERROR ')}")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {count:6d}  {outcome}")
    if "Traceback" in log or echo >= 1.0:
        print(f"kept for a look: {root / 'node' / 'node.log'}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
