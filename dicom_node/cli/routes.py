"""``routes``: which route a series would take, from files or from the index, and why."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import NodeConfig
from .common import EXIT_OK, EXIT_USAGE, fail


def cmd_routes(config: NodeConfig, args: argparse.Namespace) -> int:
    from ..flow.route_check import as_json, describe_route, evaluate, facts_from_files, facts_from_index, render

    if args.action == "list" or not args.targets:
        if args.action == "test":
            return fail(EXIT_USAGE, "routes test: give files, folders or a Study Instance UID")
        for route in config.routes:
            print(describe_route(route, config))
        if not config.routes:
            print("no routes configured: every series is stored, none analysed or forwarded")
        return EXIT_OK
    paths = [Path(t) for t in args.targets]
    if all(p.exists() for p in paths):
        reports = facts_from_files(paths, config, calling_ae=args.calling_ae, called_ae=args.called_ae)
        where = "in " + ", ".join(args.targets)
    elif len(args.targets) == 1 and all(c.isdigit() or c == "." for c in args.targets[0]):
        if not config.index.exists():
            return fail(EXIT_USAGE, f"no index at {config.index.describe()}")
        reports = facts_from_index(config.index.location, args.targets[0], config)
        where = f"for study {args.targets[0]} in {config.index.describe()}"
    else:
        missing = next(t for t in args.targets if not Path(t).exists())
        return fail(EXIT_USAGE, f"routes test: {missing} is neither a file, a folder nor a Study Instance UID")
    if not reports:
        return fail(EXIT_USAGE, f"no DICOM series found {where}")
    study_rules = evaluate(reports, config)
    if args.json:
        json.dump(as_json(reports, study_rules), sys.stdout, indent=2)
        print()
    else:
        print(render(reports, study_rules, config))
    return EXIT_OK
