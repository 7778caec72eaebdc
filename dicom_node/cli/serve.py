"""``serve`` (the node, or one role of it) and ``worker`` (analysis workers on their own): the
checks that refuse to start a node that could not do what its configuration asks."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from ..config import NodeConfig
from ..errors import ConfigError
from ..privacy.deidentify import deidentifier_for
from ..storage.file_modes import readable_secrets
from .common import EXIT_OK, err, setup_command_logging


def cmd_serve(config: NodeConfig, args: argparse.Namespace) -> int:
    import os

    from ..metrics_folder import use_folder
    from ..process import name_process

    name_process("dn-supervisor" if args.role == "all" else f"dn-serve-{args.role}")

    # Before anything imports prometheus_client: every process of the node counts into one folder.
    use_folder(config.index.path.parent / "metrics")
    config = _with_queues(config, args)
    from ..service.node import Node
    from ..service.supervisor import Supervisor

    setup_command_logging(args.verbose, config)
    for problem in readable_secrets(config):
        logging.getLogger("dicom_node").warning("%s", problem)
    if args.role in ("all", "worker"):
        _check_workers(config)
    if args.role in ("all", "sender"):
        _check_deidentification(config)
    if args.role in ("worker", "sender"):
        return _serve_downstream(config, args.role)
    listeners = config.node.worker_count(os.cpu_count())  # node.workers: listener processes
    node: Node | Supervisor = Node(config, log_pdus=args.verbose, role=args.role) if listeners == 1 else \
        Supervisor(config, listeners, log_pdus=args.verbose, role=args.role)
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
    from ..service.downstream import Downstream
    from ..storage.audit import AuditLog
    from ..storage.index import Index

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


def cmd_worker(config: NodeConfig, args: argparse.Namespace) -> int:
    from ..flow.worker import Worker
    from ..pipelines.build import pipeline_problems

    setup_command_logging(args.verbose, config)
    problems = pipeline_problems(config)  # this process runs the models: checked here, torch and all
    if problems:
        raise ConfigError("a configured pipeline cannot run:\n  " + "\n  ".join(problems))
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


def _check_workers(config: NodeConfig) -> None:
    """Refuse to start with a pipeline that cannot run (bad card, missing weights or extra), and
    say which routes' jobs no worker here takes (a GPU pipeline on a machine without one: they
    wait for a worker on another machine, or for ever on a single one).

    Both questions need torch (building a pipeline loads it, and so does asking whether it sees
    a GPU): they are answered in a short-lived process of its own, so this one (the supervisor,
    which runs no model) does not keep 300 MB of model libraries mapped for the node's lifetime."""
    import multiprocessing

    from ..flow.job_engine import unserved_queues, worker_environment, worker_queues

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        problems, gpu = pool.apply(worker_environment, (config,))
    if problems:
        raise ConfigError("a configured pipeline cannot run:\n  " + "\n  ".join(problems))
    serving = worker_queues(config, has_gpu=lambda: gpu)
    for queue, routes in unserved_queues(config, serving).items():
        logging.getLogger("dicom_node").warning(
            "Jobs of route(s) %s go to queue %r, which no worker here takes (this machine's workers take %s; "
            "--queues / jobs.queues): they wait for a worker that serves it", ", ".join(routes), queue, ", ".join(serving))


def _check_deidentification(config: NodeConfig) -> None:
    """Refuse to start when a route's de-identification profile cannot run (no key file, a key
    too short): found now, not when the first study is to be forwarded."""
    for profile in sorted({t.deidentify for r in config.routes for t in [*r.forward, *r.destinations]
                           if not isinstance(t, str)}):
        deidentifier_for(config.deidentification, profile)
