#!/usr/bin/env python3
"""Long differential stress run of the node's DICOM traffic, both directions (the CI test runs
200 associations of 1-8 instances; this runs as many as asked, with a CPU burner beside).

Listener direction: raw-framed, pynetdicom and DCMTK storescu senders to a ``dicom-node serve``
(2 listener processes). Sender direction: the node's ``send_files`` to the raw SCP, DCMTK
storescp and pynetdicom SCPs. Each direction runs on the fast paths, and with ``--differential``
the same plan again on pynetdicom's own paths, whose statuses must be the same. tests/support/stress.py
says what is drawn and checked. Prints, per direction and run: associations, C-STOREs,
responses, unanswered requests, other problems, "Received unexpected" / DIMSE-timeout log lines.

    .venv/bin/python scripts/stress_dimse.py --associations 500 --instances 10 30 [--seed N]
        [--no-burn] [--differential] [--only listener|sender]

Exit 0 when every request of every run was answered as expected, 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.net.patches import pynetdicom_tuning  # noqa: E402
from tests.conftest import config_dict  # noqa: E402
from tests.support import stress  # noqa: E402
from tests.support.peers import start_node, system_binary  # noqa: E402


def summary(direction: str, name: str, outcomes: list[stress.Outcome], log_lines: list[str], seconds: float) -> bool:
    requests = stress.requests(outcomes)
    answered = sum(status is not None for o in outcomes for status in o.statuses)
    problems = stress.problems(outcomes)
    print(f"{direction:8} {name:10} {len(outcomes):5} associations {requests:6} C-STOREs {answered:6} responses "
          f"{requests - answered:4} unanswered {len(problems):4} problems {len(log_lines):3} 'unexpected'/timeout "
          f"log lines  {seconds:6.1f} s")
    for line in (problems + log_lines)[:10]:
        print(f"    {line}")
    return not problems and not log_lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--associations", type=int, default=500)
    parser.add_argument("--instances", type=int, nargs=2, default=(10, 30), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--no-burn", action="store_true", help="no CPU-burning process beside the node")
    parser.add_argument("--differential", action="store_true", help="repeat each plan on pynetdicom's own paths")
    parser.add_argument("--only", choices=["listener", "sender"])
    args = parser.parse_args()
    seed = args.seed or random.SystemRandom().randrange(1, 10**6)
    print(f"seed {seed}, {args.associations} associations of {args.instances[0]}-{args.instances[1]} instances, "
          f"{args.concurrency} at once, CPU burner {'off' if args.no_burn else 'on'}")
    work = Path(tempfile.mkdtemp(prefix="stress-dimse-"))
    ok = True
    try:
        pool = stress.make_templates(work / "templates")
        templates = [template for template, _ in pool]
        runs = [True, False] if args.differential else [True]
        captured = io.StringIO()  # this process's senders' and receivers' log lines
        handler = logging.StreamHandler(captured)
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
        if args.only in (None, "listener"):
            plans = stress.make_plans(pool, args.associations, seed, tuple(args.instances))
            results = {}
            for fast in runs:
                name = "fast" if fast else "pynetdicom"
                folder = work / f"listener-{name}"
                config = config_dict(folder)
                config["node"].update(workers=2, fast_paths=fast)
                node = start_node(folder / "node", config)
                started = time.monotonic()
                mark = len(captured.getvalue())
                try:
                    with stress.cpu_burner(not args.no_burn, seconds=3600):
                        results[fast] = stress.run_listener(plans, templates, node.port, folder / "storage",
                                                            folder / "work", system_binary("storescu"),
                                                            args.concurrency, seed)
                finally:
                    node.stop()
                lines = (stress.unexpected_lines((folder / "node" / "node.log").read_text())
                         + stress.unexpected_lines(captured.getvalue()[mark:]))
                ok &= summary("listener", name, results[fast], lines, time.monotonic() - started)
                shutil.rmtree(folder / "storage", ignore_errors=True)
            if args.differential:
                differ = stress.compare(results[True], results[False])
                print(f"listener fast vs pynetdicom paths: {len(differ)} associations with other statuses")
                for line in differ[:10]:
                    number = int(line.split(":")[0].split()[1])
                    print(f"    {line} (sender {plans[number].sender}, max PDU {plans[number].max_pdu}, "
                          f"{plans[number].mode})")
                ok &= not differ
        if args.only in (None, "sender"):
            plans = stress.make_plans(pool, args.associations, seed + 1, tuple(args.instances), flaws=False)
            results = {}
            for fast in runs:
                if fast:
                    pynetdicom_tuning.install()
                else:
                    pynetdicom_tuning.uninstall()
                name = "fast" if fast else "pynetdicom"
                folder = work / f"sender-{name}"
                receivers = stress.start_receivers(folder, system_binary("storescp"), seed)
                started = time.monotonic()
                mark = len(captured.getvalue())
                try:
                    with stress.cpu_burner(not args.no_burn, seconds=3600):
                        results[fast] = stress.run_sender(plans, templates, receivers, folder / "work", args.concurrency)
                finally:
                    receivers.stop()
                lines = stress.unexpected_lines(captured.getvalue()[mark:]) + receivers.raw.errors
                ok &= summary("sender", name, results[fast], lines, time.monotonic() - started)
                shutil.rmtree(folder, ignore_errors=True)
            if args.differential:
                differ = stress.compare(results[True], results[False])
                print(f"sender   fast vs pynetdicom paths: {len(differ)} associations with other statuses")
                ok &= not differ
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("OK: every request answered as expected" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
