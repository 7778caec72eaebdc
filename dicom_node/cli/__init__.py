"""``dicom-node``: the operator's command line.

Exit codes scripts can trust: 0 success; 1 the work ran but something failed (an instance
refused, a peer answered a failure); 2 bad usage or configuration; 3 a peer could not be
reached or refused the association. Every failure prints one line saying why.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .config import DEFAULT_CONFIG_PATH, NodeConfig, load_config, resolve_config_path
from .errors import ConfigError, NodeError, PeerError
from .file_modes import readable_secrets, restrict_new_files

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PEER = 3

err = Console(stderr=True, soft_wrap=True)


def _fail(code: int, message: str) -> int:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return code


def _setup_logging(verbose: bool, config: NodeConfig | None = None) -> None:
    from .logs import setup_logging

    setup_logging(verbose, json_lines=config is not None and config.logs.format == "json")


def cmd_serve(config: NodeConfig, args: argparse.Namespace) -> int:
    import os

    from .metrics_folder import use_folder

    # Before anything imports prometheus_client: every process of the node counts into one folder.
    use_folder(config.index.path.parent / "metrics")
    config = _with_queues(config, args)
    from .service import Node, Supervisor

    _setup_logging(args.verbose, config)
    for problem in readable_secrets(config):
        logging.getLogger("dicom_node").warning("%s", problem)
    if args.role in ("all", "worker"):
        _check_pipelines(config)
        _warn_unserved_queues(config)
    if args.role in ("all", "sender"):
        _check_deidentification(config)
    if args.role in ("worker", "sender"):
        return _serve_downstream(config, args.role)
    workers = config.node.worker_count(os.cpu_count())
    node: Node | Supervisor = Node(config, log_pdus=args.verbose, role=args.role) if workers == 1 else \
        Supervisor(config, workers, log_pdus=args.verbose, role=args.role)
    stop = threading.Event()
    # Child processes start with SIGINT ignored (the disposition survives exec): a Ctrl-C in the
    # terminal reaches the whole process group, and a child still importing would die with a
    # traceback; this process stops them itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        node.start()
    finally:
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    if node.recovery and node.recovery.reconciled and not node.recovery.first_start:
        logging.getLogger("dicom_node").warning("Recovered from an unclean shutdown: %s", node.recovery)
    err.print(f"[green]{config.node.ae_title}[/] listening on {config.node.host}:{node.port} (Ctrl-C to stop)", highlight=False)
    if node.tls_port is not None and config.node.plain:
        err.print(f"DICOM TLS on {config.node.host}:{node.tls_port}", highlight=False)
    if node.web is not None:
        err.print(f"dashboard: http://{config.web.host}:{node.web.port}/", highlight=False)
    try:
        stop.wait()
    finally:
        node.stop()
    return EXIT_OK


def _with_queues(config: NodeConfig, args: argparse.Namespace) -> NodeConfig:
    """``config`` with ``--queues`` (the job queues this machine's workers take) in jobs.queues."""
    if not getattr(args, "queues", None):
        return config
    return config.model_copy(update={"jobs": config.jobs.model_copy(update={"queues": list(args.queues)})})


def _serve_downstream(config: NodeConfig, role: str) -> int:
    """``serve --role worker``: the analysis worker processes (``jobs.workers``), replaced when
    one dies; ``serve --role sender``: the outbox sender (the one holding the index's sender lock
    sends, others stand by). Neither listens; both share the index and folders with the listener."""
    from .audit import AuditLog
    from .index import Index
    from .service import Downstream

    index = Index(config.index.location, synchronous="NORMAL")
    audit = AuditLog.from_config(config) if role == "sender" else None
    downstream = Downstream(config, index, audit, sender=role == "sender", workers=role == "worker")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    downstream.start(describe=False)
    err.print(f"{config.node.ae_title}: {role} role running on {config.index.describe()} (Ctrl-C to stop)", highlight=False)
    try:
        while not stop.wait(1.0):
            downstream.supervise()
    finally:
        downstream.stop()
        if audit is not None:
            audit.close()
        index.close()
    return EXIT_OK


def _client_tls(config: NodeConfig) -> Any:
    """The node's TLS client context for peers with tls: true (None without node.tls)."""
    from .tls import client_context

    return client_context(config.node.tls) if config.node.tls is not None else None


def cmd_echo(config: NodeConfig, args: argparse.Namespace) -> int:
    from .scu import echo

    peer = config.peer(args.peer)
    started = time.perf_counter()
    try:
        status = echo(config.node.ae_title, peer, timeout=args.timeout, tls=_client_tls(config))
    except PeerError as exc:
        return _fail(EXIT_PEER, str(exc))
    if status != 0:
        return _fail(EXIT_FAILED, f"{peer.name} answered C-ECHO with status 0x{status:04X}")
    print(f"C-ECHO {peer.name} ({peer.ae_title}@{peer.host}:{peer.port}): success in {1000 * (time.perf_counter() - started):.0f} ms")
    return EXIT_OK


def cmd_send(config: NodeConfig, args: argparse.Namespace) -> int:
    from .scu import SendResult, iter_dicom_candidates, send_files

    peer = config.peer(args.to)
    if not peer.receive:
        return _fail(EXIT_USAGE, f"peers: {peer.name} has receive: false; the node sends nothing to it")
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        return _fail(EXIT_USAGE, f"no such file or folder: {missing[0]}")
    files = list(iter_dicom_candidates(args.paths))
    if not files:
        return _fail(EXIT_USAGE, "no files to send")
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]sending to " + peer.name), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=False, disable=args.quiet,
    ) as progress:
        task = progress.add_task("send", total=len(files))

        def on_result(result: SendResult) -> None:
            progress.advance(task)
            if not result.ok:
                status = "not sent" if result.status is None else f"0x{result.status:04X}"
                progress.console.print(f"[red]failed[/] {result.path}: {status} {result.reason}", highlight=False)

        report = send_files(config.node.ae_title, peer, files, on_result=on_result, timeout=args.timeout,
                            tls=_client_tls(config))
    elapsed = time.perf_counter() - started
    failed = report.failed
    print(f"{report.sent} of {len(files)} sent to {peer.name} in {elapsed:.1f} s, {len(failed)} failed")
    if failed:
        if report.sent == 0 and all(r.unreachable for r in failed):
            return _fail(EXIT_PEER, failed[0].reason)
        return _fail(EXIT_FAILED, f"{len(failed)} instance(s) not stored by {peer.name}; first: {failed[0].path}: {failed[0].reason}")
    return EXIT_OK


def _when(timestamp: float | None) -> str:
    return "" if timestamp is None else datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def cmd_status(config: NodeConfig, args: argparse.Namespace) -> int:
    from .index import Index

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
    from . import schema

    where = config.index.describe()
    if args.status and not config.index.exists():
        return _fail(EXIT_FAILED, f"no index at {where} yet (migrate or serve creates it at revision {schema.HEAD})")
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
        return _fail(EXIT_FAILED, f"index {where}: {exc}")
    except Exception as exc:  # noqa: BLE001 - Alembic's and the driver's errors, said plainly
        return _fail(EXIT_FAILED, f"index {where}: migration failed: {type(exc).__name__}: {exc}")
    print(f"index {where}: schema revision {before or 'none'} -> {after}")
    return EXIT_OK


def cmd_jobs(config: NodeConfig, args: argparse.Namespace) -> int:
    from .index import Index
    from .job_engine import job_queue, procrastinate_counts
    from .outbox import Outbox

    if not config.index.exists():
        return _fail(EXIT_USAGE, f"no index at {config.index.describe()} (has the node run with this configuration?)")
    index = Index(config.index.location, synchronous="NORMAL")
    try:
        queue, outbox = job_queue(index, config), Outbox(index)
        now = time.time()
        if args.retry is not None:
            if not queue.retry(args.retry, now):
                return _fail(EXIT_FAILED, f"job {args.retry} is not dead-lettered (or does not exist); nothing to retry")
            print(f"job {args.retry} queued again")
            return EXIT_OK
        if args.retry_delivery is not None:
            if not outbox.retry(args.retry_delivery, now):
                return _fail(EXIT_FAILED, f"delivery {args.retry_delivery} is not dead-lettered (or does not exist)")
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


def cmd_worker(config: NodeConfig, args: argparse.Namespace) -> int:
    from .worker import Worker

    _setup_logging(args.verbose, config)
    _check_pipelines(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker = Worker(_with_queues(config, args))
    try:
        done = worker.run(stop, burst=args.burst)
    finally:
        worker.close()
    if args.burst:
        print(f"{done} job(s) done; queue empty")
    return EXIT_OK


def cmd_demo(config: NodeConfig, args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args, err)


def _optional_config(path: Path | None) -> NodeConfig | None:
    """The configuration when there is one (``models`` works without it)."""
    import os

    if path is None and not resolve_config_path(None, os.environ).exists():
        return None
    return load_config(path, missing_hint=_MISSING_HINT)


def cmd_models(config: NodeConfig | None, args: argparse.Namespace) -> int:
    from ai.registry import ModelCardError, ModelRegistry

    from .pipelines import describe

    config = _optional_config(args.config)
    try:
        cards = ModelRegistry(list(args.models_dir or [])).cards()
    except ModelCardError as exc:
        return _fail(EXIT_USAGE, str(exc))
    pipelines = [describe(name, spec) for name, spec in config.pipelines.items()] if config else []
    checks: dict[str, str] = {}
    if args.check:
        from .model_check import check_pipeline

        for name, spec in (config.pipelines.items() if config else []):
            checks[name] = check_pipeline(name, spec)
        for row in pipelines:
            row["check"] = checks[row["pipeline"]]
    if args.json:
        json.dump({"pipelines": pipelines,
                   "installed": [{"name": c.name, "version": c.version, "task": c.data.task, "modality": c.data.modality,
                                  "format": c.data.format, "weights": str(c.weights_path),
                                  "weights_present": c.weights_path.exists(), "labels": [l.name for l in c.data.labels],
                                  "limitations": c.data.limitations.strip()} for c in cards]},
                  sys.stdout, indent=2)
        print()
    else:
        console = Console() if sys.stdout.isatty() else Console(width=200)
        if config is not None:
            table = Table(title="Configured pipelines")
            for column in ("pipeline", "kind", "model", "format", "labels", "source", *(["check"] if args.check else [])):
                table.add_column(column)
            for row in pipelines:
                model = f"{row['model']} {row['version']}".strip() if "error" not in row else f"[red]{row['error']}[/]"
                table.add_row(row["pipeline"], row["kind"], model, row["format"], ", ".join(row["labels"]), row["source"],
                              *([row["check"]] if args.check else []))
            console.print(table)
        table = Table(title="Installed models")
        for column in ("name", "version", "task", "modality", "labels", "weights"):
            table.add_column(column)
        for card in cards:
            table.add_row(card.name, card.version, card.data.task, card.data.modality, ", ".join(l.name for l in card.data.labels),
                          card.data.format if card.weights_path.exists() else f"[red]missing {card.data.weights}[/]")
        console.print(table)
    failed = [name for name, outcome in checks.items() if not outcome.startswith("ok")]
    if failed:
        return _fail(EXIT_FAILED, f"pipeline(s) failed the check: {', '.join(failed)}")
    return EXIT_OK


def _check_pipelines(config: NodeConfig) -> None:
    """Refuse to start with a pipeline that cannot run (bad card, missing weights or extra)."""
    from .pipelines import pipeline_problems

    problems = pipeline_problems(config)
    if problems:
        raise ConfigError("a configured pipeline cannot run:\n  " + "\n  ".join(problems))


def _warn_unserved_queues(config: NodeConfig) -> None:
    """Say which routes' jobs no worker here takes (a GPU pipeline on a machine without one):
    they wait for a worker on another machine, or for ever on a single one."""
    from .job_engine import unserved_queues, worker_queues

    serving = worker_queues(config)
    for queue, routes in unserved_queues(config, serving).items():
        logging.getLogger("dicom_node").warning(
            "Jobs of route(s) %s go to queue %r, which no worker here takes (this machine's workers take %s; "
            "--queues / jobs.queues): they wait for a worker that serves it", ", ".join(routes), queue, ", ".join(serving))


def _check_deidentification(config: NodeConfig) -> None:
    """Refuse to start when a route's de-identification profile cannot run (no key file, a key
    too short): found now, not when the first study is to be forwarded."""
    for profile in sorted({t.deidentify for r in config.routes for t in [*r.forward, *r.destinations]
                           if not isinstance(t, str)}):
        config.deidentification.deidentifier(profile)


def cmd_deidentify(config: NodeConfig, args: argparse.Namespace) -> int:
    from .privacy.export import check_folders, export
    from .scu import iter_dicom_candidates

    if not args.source.is_dir():
        return _fail(EXIT_USAGE, f"deidentify: IN {args.source} is not a folder")
    try:
        check_folders(args.source, args.target)
    except ValueError as exc:
        return _fail(EXIT_USAGE, f"deidentify: {exc}")
    engine = config.deidentification.deidentifier(args.profile)
    files = list(iter_dicom_candidates([args.source]))
    with Progress(TextColumn("de-identifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("files", total=len(files))
        summary = export(files, args.target, engine, lambda _: progress.advance(task))
    print(f"{summary.written} instance(s) de-identified by profile {args.profile} into {args.target}")
    for reason, count in summary.held.most_common():
        print(f"held back: {count} instance(s): {reason}")
    for path, reason in summary.unreadable[:20]:
        print(f"not DICOM or unreadable: {path}: {reason}")
    if len(summary.unreadable) > 20:
        print(f"... and {len(summary.unreadable) - 20} more not DICOM or unreadable")
    actions = ", ".join(f"{code} {n}" for code, n in sorted(summary.actions.items()))
    if actions:
        print(f"actions (PS3.15 Table E.1-1 codes): {actions}")
    return EXIT_OK if summary.written or not files else EXIT_FAILED


def cmd_routes(config: NodeConfig, args: argparse.Namespace) -> int:
    from .route_check import as_json, describe_route, evaluate, facts_from_files, facts_from_index, render

    if args.action == "list" or not args.targets:
        if args.action == "test":
            return _fail(EXIT_USAGE, "routes test: give files, folders or a Study Instance UID")
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
            return _fail(EXIT_USAGE, f"no index at {config.index.describe()}")
        reports = facts_from_index(config.index.location, args.targets[0], config)
        where = f"for study {args.targets[0]} in {config.index.describe()}"
    else:
        missing = next(t for t in args.targets if not Path(t).exists())
        return _fail(EXIT_USAGE, f"routes test: {missing} is neither a file, a folder nor a Study Instance UID")
    if not reports:
        return _fail(EXIT_USAGE, f"no DICOM series found {where}")
    study_rules = evaluate(reports, config)
    if args.json:
        json.dump(as_json(reports, study_rules), sys.stdout, indent=2)
        print()
    else:
        print(render(reports, study_rules, config))
    return EXIT_OK


def cmd_audit(config: NodeConfig | None, args: argparse.Namespace) -> int:
    from .audit import default_key_path, load_key, records_after_last_checkpoint, verify

    if args.path is None and config is None:
        config = load_config(args.config, missing_hint=_MISSING_HINT)
    path = args.path or config.audit.path  # type: ignore[union-attr]
    if not path.exists():
        return _fail(EXIT_USAGE, f"no audit file at {path}")
    key_path = (config.audit.key_file if config is not None else None) or default_key_path(path)
    key = load_key(key_path) if key_path.exists() else None
    if key is None:
        print(f"{path}: no audit key at {key_path}: checkpoint signatures not checked")
    checked, breaks = verify(path, key)
    for item in breaks:
        print(f"{path}:{item.line}: {item.problem}")
    if breaks:
        return _fail(EXIT_FAILED, f"{path}: the chain is broken in {len(breaks)} place(s) of {checked} record(s)")
    print(f"{path}: {checked} record(s), the chain is whole; {records_after_last_checkpoint(path)} record(s) after "
          "the last checkpoint")
    return EXIT_OK


def cmd_init(config: NodeConfig | None, args: argparse.Namespace) -> int:
    from importlib.resources import files

    target: Path = args.path
    if target.exists() and not args.force:
        return _fail(EXIT_USAGE, f"{target} exists; not overwriting it (--force to replace it)")
    text = files("dicom_node").joinpath("default_node.yaml").read_text(encoding="utf-8")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        return _fail(EXIT_FAILED, f"cannot write {target}: {exc.strerror}")
    print(f"wrote the commented default configuration to {target}")
    print("  edit node.ae_title/port and the peers that may send to the node, then:")
    hint = "" if target == DEFAULT_CONFIG_PATH else f" --config {target}"
    print(f"  dicom-node serve{hint}")
    return EXIT_OK


_CONFIG_HELP = "configuration file (default: $DICOM_NODE_CONFIG, else config/node.yaml)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-node", description="A DICOM node that receives studies and runs AI pipelines on them.")
    parser.add_argument("--config", type=Path, default=None, help=_CONFIG_HELP)
    # Accepted after the command too (`dicom-node serve --config node.yaml`); there it wins.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=_CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add_parser(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    init = sub.add_parser("init", help="write the commented default configuration to PATH (default config/node.yaml)")
    init.add_argument("path", nargs="?", type=Path, default=DEFAULT_CONFIG_PATH)
    init.add_argument("--force", action="store_true", help="replace PATH if it exists")
    init.set_defaults(func=cmd_init, needs_config=False)

    serve = sub.add_parser("serve", help="run the listener until Ctrl-C / SIGTERM")
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging, pynetdicom's included")
    serve.add_argument("--role", choices=["all", "listener", "worker", "sender"], default="all",
                       help="all (default): everything on this machine; listener: DICOM listener, completion, routing, "
                            "web service, retention; worker: the analysis workers; sender: the outbox sender (one "
                            "per index sends, others stand by)")
    serve.add_argument("--queues", nargs="+", metavar="QUEUE",
                       help="the job queues this machine's workers take (default jobs.queues, else gpu and default "
                            "where torch sees a GPU, default alone where it does not)")
    serve.set_defaults(func=cmd_serve)

    echo = sub.add_parser("echo", help="C-ECHO a configured peer")
    echo.add_argument("peer", help="peer name from the configuration")
    echo.add_argument("--timeout", type=float, default=10.0)
    echo.set_defaults(func=cmd_echo)

    send = sub.add_parser("send", help="C-STORE files or folders to a configured peer")
    send.add_argument("paths", nargs="+", type=Path)
    send.add_argument("--to", required=True, help="peer name from the configuration")
    send.add_argument("--timeout", type=float, default=30.0)
    send.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    send.set_defaults(func=cmd_send)

    status = sub.add_parser("status", help="studies and series in the index, with their states")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    jobs = sub.add_parser("jobs", help="analysis jobs and result deliveries, with states, attempts and errors")
    jobs.add_argument("--json", action="store_true", help="machine-readable output")
    jobs.add_argument("--limit", type=int, default=50, help="newest N jobs (default 50)")
    jobs.add_argument("--retry", type=int, metavar="JOB_ID", help="queue a dead-lettered job again")
    jobs.add_argument("--retry-delivery", type=int, metavar="DELIVERY_ID", help="queue a dead-lettered delivery again")
    jobs.set_defaults(func=cmd_jobs)

    migrate = sub.add_parser("migrate", help="upgrade the index's schema to this release's revision (every process "
                                             "also does it when it opens an older index)")
    migrate.add_argument("--status", action="store_true", help="say which revision the index is at; exit 1 unless current")
    migrate.add_argument("--to", metavar="REVISION", help="upgrade or downgrade to REVISION (a release's rollback)")
    migrate.set_defaults(func=cmd_migrate)

    worker = sub.add_parser("worker", help="run one analysis worker (serve starts jobs.workers of them itself)")
    worker.add_argument("--burst", action="store_true", help="run the queued jobs, then exit")
    worker.add_argument("--queues", nargs="+", metavar="QUEUE", help="the job queues to take (as serve --queues)")
    worker.add_argument("-v", "--verbose", action="store_true")
    worker.set_defaults(func=cmd_worker)

    demo = sub.add_parser("demo", help="phantom CT -> node -> SEG + SR, with a measurement table and a PNG preview")
    demo.add_argument("--out", "--workdir", dest="workdir", type=Path, default=Path("var/demo"),
                      help="where the demo keeps everything (default var/demo under the current folder); it "
                           "builds its own configuration, so it runs from any folder")
    demo.add_argument("--pipeline", choices=("ct-organs", "ct-baseline"), default="ct-organs")
    demo.add_argument("--orthanc", action="store_true", help="let Orthanc (if installed) play the PACS")
    demo.add_argument("--viewer", action="store_true",
                      help="then show the result in OHIF (Orthanc + DICOMweb + the OHIF viewer, on loopback) until Ctrl-C")
    demo.add_argument("--serve-seconds", type=float, default=None, help=argparse.SUPPRESS)  # tests: stop the viewer by itself
    demo.add_argument("--seed", type=int, default=7, help="phantom seed")
    demo.add_argument("--timeout", type=float, default=300.0)
    demo.set_defaults(func=cmd_demo, needs_config=False)

    audit = sub.add_parser("audit", help="`audit verify [PATH]`: check the audit trail's hash chain (exit 1 if a line "
                                         "was changed, removed or inserted)")
    audit.add_argument("action", choices=["verify"])
    audit.add_argument("path", nargs="?", type=Path, help="the audit file (default: audit.path of the configuration)")
    audit.set_defaults(func=cmd_audit, needs_config=False)

    routes = sub.add_parser("routes", help="the routing rules, one line each; `routes test PATH|STUDY_UID`: which rules "
                                           "act on a study and, for the others, the condition that failed")
    routes.add_argument("action", nargs="?", choices=["list", "test"], default="list")
    routes.add_argument("targets", nargs="*", help="files or folders of DICOM, or a Study Instance UID in the index")
    routes.add_argument("--calling-ae", default="", help="the calling AE title to assume for files (default: none)")
    routes.add_argument("--called-ae", default="", help="the called AE title to assume for files (default: node.ae_title)")
    routes.add_argument("--json", action="store_true")
    routes.set_defaults(func=cmd_routes)

    deid = sub.add_parser("deidentify", help="de-identify every DICOM file under IN into OUT by a profile of "
                                             "deidentification.profiles (PS3.15 Annex E), for exporting data")
    deid.add_argument("source", type=Path, metavar="IN")
    deid.add_argument("target", type=Path, metavar="OUT")
    deid.add_argument("--profile", required=True, help="a profile named under deidentification.profiles")
    deid.set_defaults(func=cmd_deidentify)

    models = sub.add_parser("models", help="the configured pipelines and the installed models, from their model cards")
    models.add_argument("--models-dir", type=Path, action="append", help="another folder of model folders")
    models.add_argument("--json", action="store_true")
    models.add_argument("--check", action="store_true",
                        help="load every configured pipeline and run it on a small phantom CT (exit 1 if one fails)")
    models.set_defaults(func=cmd_models, needs_config=False)
    return parser


_MISSING_HINT = "`dicom-node init` writes the commented default there; or give --config PATH / $DICOM_NODE_CONFIG"


def main(argv: Sequence[str] | None = None) -> int:
    restrict_new_files()  # before anything is written: the index, audit trail and results are owner-only
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, missing_hint=_MISSING_HINT) if getattr(args, "needs_config", True) else None
        if config is not None and args.command == "serve":
            import os

            err.print(f"configuration: {resolve_config_path(args.config, os.environ).resolve()}", highlight=False)
        return int(args.func(config, args))
    except ConfigError as exc:
        return _fail(EXIT_USAGE, f"configuration: {exc}")
    except NodeError as exc:
        return _fail(EXIT_FAILED, str(exc))
    except KeyboardInterrupt:
        return _fail(EXIT_FAILED, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
