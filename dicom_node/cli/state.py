"""``status``, ``jobs`` and ``migrate``: what the index holds, and its schema."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from ..config import NodeConfig
from ..errors import NodeError
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail


def _when(timestamp: float | None) -> str:
    return "" if timestamp is None else datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def cmd_status(config: NodeConfig, args: argparse.Namespace) -> int:
    from ..storage.index import Index

    if not config.index.exists():
        studies: list[dict[str, Any]] = []
    else:
        index = Index(config.index.location, synchronous="NORMAL")
        try:
            studies = index.studies()
        finally:
            index.close()
    if args.json:
        json.dump({"studies": studies}, sys.stdout, indent=2, default=str)
        print()
        return EXIT_OK
    # Full UIDs matter to operators: a pipe or a log file gets a wide table, not a squeezed one.
    out = Console() if sys.stdout.isatty() else Console(width=220)
    if not studies:
        out.print(f"No studies in {config.index.describe()}")
        return EXIT_OK
    table = Table(title=f"Studies in {config.index.describe()}")
    for column in ("patient", "study / series", "modality", "instances", "state", "version", "last received"):
        table.add_column(column)
    for study in studies:
        count = sum(s["instance_count"] for s in study["series"])
        table.add_row(f"{study['patient_name']} ({study['patient_id']})", study["study_uid"], "", str(count),
                      study["state"], str(study["version"]), _when(study["last_received_at"]), style="bold")
        for series in study["series"]:
            label = f"  {series['series_number'] or ''} {series['series_description']}".rstrip()
            table.add_row("", f"{label}\n  {series['series_uid']}", series["modality"], str(series["instance_count"]),
                          series["state"], str(series["version"]), _when(series["last_received_at"]))
    out.print(table)
    return EXIT_OK


def cmd_migrate(config: NodeConfig, args: argparse.Namespace) -> int:
    """Bring the index's schema to this release's revision (or ``--to`` one), or say where it is."""
    from ..storage import schema

    where = config.index.describe()
    if args.status and not config.index.exists():
        return fail(EXIT_FAILED, f"no index at {where} yet (migrate or serve creates it at revision {schema.HEAD})")
    try:
        before = schema.revision_at(config.index.location) if config.index.exists() else None
        if args.status:
            state = "current" if before == schema.HEAD else "behind: run dicom-node migrate" if before in (None, *schema.revisions()) \
                else "newer than this release"
            print(f"index {where}: schema revision {before or 'none (before migrations)'}; this release: "
                  f"{schema.HEAD} ({state})")
            return EXIT_OK if before == schema.HEAD else EXIT_FAILED
        target = args.to or "head"
        if target != "head" and before is not None and schema.revisions().index(target) < schema.revisions().index(before):
            schema.downgrade(config.index.location, target)
        else:
            schema.upgrade(config.index.location, target)
        after = schema.revision_at(config.index.location)
    except (ValueError, NodeError) as exc:
        return fail(EXIT_FAILED, f"index {where}: {exc}")
    except Exception as exc:  # noqa: BLE001 - Alembic's and the driver's errors, said plainly
        return fail(EXIT_FAILED, f"index {where}: migration failed: {type(exc).__name__}: {exc}")
    print(f"index {where}: schema revision {before or 'none'} -> {after}")
    return EXIT_OK


def cmd_jobs(config: NodeConfig, args: argparse.Namespace) -> int:
    from ..flow.job_engine import job_queue, procrastinate_counts
    from ..flow.outbox import Outbox
    from ..storage.index import Index

    if not config.index.exists():
        return fail(EXIT_USAGE, f"no index at {config.index.describe()} (has the node run with this configuration?)")
    index = Index(config.index.location, synchronous="NORMAL")
    try:
        queue, outbox = job_queue(index, config), Outbox(index)
        now = time.time()
        if args.retry is not None:
            if not queue.retry(args.retry, now):
                return fail(EXIT_FAILED, f"job {args.retry} is not dead-lettered (or does not exist); nothing to retry")
            print(f"job {args.retry} queued again")
            return EXIT_OK
        if args.retry_delivery is not None:
            if not outbox.retry(args.retry_delivery, now):
                return fail(EXIT_FAILED, f"delivery {args.retry_delivery} is not dead-lettered (or does not exist)")
            print(f"delivery {args.retry_delivery} queued again")
            return EXIT_OK
        jobs, deliveries = queue.list(args.limit), outbox.list(args.limit * 4)
        # procrastinate's own view (todo / doing / failed), beside the jobs table's
        engine = {"name": config.job_engine, "procrastinate_jobs": procrastinate_counts(index)}
    finally:
        index.close()
    if args.json:
        for row in deliveries:
            row["candidates"] = json.loads(row["candidates"])
        json.dump({"engine": engine, "jobs": jobs, "deliveries": deliveries}, sys.stdout, indent=2, default=str)
        print()
        return EXIT_OK
    out = Console() if sys.stdout.isatty() else Console(width=220)
    if not jobs:
        out.print(f"No jobs in {config.index.describe()}")
        return EXIT_OK
    waiting = ", ".join(f"{k} {v}" for k, v in sorted(engine["procrastinate_jobs"].items()))
    table = Table(title=f"Jobs (newest first; engine {engine['name']}{': ' + waiting if waiting else ''})")
    for column in ("id", "route", "pipeline", "queue", "series", "state", "attempts", "created", "finished",
                   "last error / why not"):
        table.add_column(column)
    colours = {"done": "green", "dead": "red", "running": "yellow", "queued": "", "delivered": "green", "pending": "yellow",
               "not applicable": "cyan"}
    for job in jobs:
        tried = job["pipeline"]
        ran = job.get("ran_pipeline") or ""
        shown = tried if not ran or ran == tried else f"{tried} -> {ran}"
        table.add_row(str(job["id"]), job["route"], shown, job["queue"], f"{job['series_uid']} v{job['series_version']}",
                      f"[{colours.get(job['state'], 'red')}]{job['state']}[/]" if colours.get(job["state"], "red") else job["state"],
                      f"{job['attempts']}/{job['max_attempts']}", _when(job["created_at"]), _when(job["finished_at"]),
                      job["last_error"])
    out.print(table)
    if deliveries:
        table = Table(title="Deliveries")
        for column in ("id", "job", "object", "peer", "state", "attempts", "delivered", "variant", "last error"):
            table.add_column(column)
        for row in deliveries:
            table.add_row(str(row["id"]), str(row["job_id"]), row["object"], row["peer"],
                          f"[{colours.get(row['state'], 'red')}]{row['state']}[/]", str(row["attempts"]),
                          _when(row["delivered_at"]), row["delivered_variant"] or "", row["last_error"])
        out.print(table)
    return EXIT_OK
