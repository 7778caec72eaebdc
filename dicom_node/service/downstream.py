"""What runs after the listener, in the supervisor: the analysis worker processes (replaced
when one dies) and the outbox sender (the one holding the index's sender lock sends)."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from typing import Any

from ..config import NodeConfig
from ..errors import IndexError_
from ..flow.delivery import Sender, SenderScheduler
from ..flow.job_engine import job_queue
from ..flow.outbox import Outbox
from ..flow.route_check import describe_route
from ..flow.routing import route_completed
from ..flow.worker import worker_main
from ..monitoring.monitor import Monitor
from ..notify.notifier import Notifier
from ..process import StopFlag
from ..storage.audit import AuditLog
from ..storage.events import emit
from ..storage.index import Index

log = logging.getLogger(__name__)


class Downstream:
    """What follows completion, run beside the sweep: routing (after every sweep), the outbox
    sender (its own schedule) and the analysis worker processes; ``sender`` and ``workers``
    say which of the last two this process runs (``serve --role``)."""

    def __init__(self, config: NodeConfig, index: Index, audit: AuditLog | None, *, sender: bool = True,
                 workers: bool = True) -> None:
        self.config = config
        self.index = index
        # procrastinate's schema (PostgreSQL) before any worker process opens the database.
        job_queue(index, config)
        # What the sender records ("delivered") must survive a power cut, or results go out twice:
        # on SQLite it commits on a connection of its own with synchronous=FULL (the listener's
        # commits stay NORMAL: recovery re-indexes the storage folder after an unclean stop).
        self._sender_index = Index(config.index.location) if sender and index.dialect == "sqlite" else None
        self.outbox = Outbox(self._sender_index or index)
        self.runs_workers = workers
        self.sender = SenderScheduler(Sender(config, self.outbox, audit), config.delivery.interval_seconds) \
            if sender else None
        # Notifications go out from the process that sends results (one per index: the sender lock).
        self.notifier = Notifier(config, self._sender_index or index, active=lambda: self.sender.lock.held) \
            if self.sender is not None and config.notifications.subscriptions else None
        # Monitoring (corrections, drift) from the same process, for the same reason.
        self.monitor = Monitor(config, self._sender_index or index, active=lambda: self.sender.lock.held) \
            if self.sender is not None and config.monitoring.enabled else None
        self._context = multiprocessing.get_context("spawn")
        self._stop = StopFlag(self._context)
        self.workers: list[Any] = []
        self._lock = threading.Lock()

    def route(self, now: float) -> None:
        """After each completion sweep: queue jobs, and replace any worker that died."""
        route_completed(self.index, self.config, now)
        self._replace_dead_workers()

    def _start_worker(self) -> Any:
        proc = self._context.Process(target=worker_main, args=(self.config, self._stop), daemon=False,
                                     name="dicom-node-worker")
        proc.start()
        return proc

    def _replace_dead_workers(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            for number, proc in enumerate(self.workers):
                if not proc.is_alive():
                    # Its job (if any) is not lost: the lease expires and a worker claims it again.
                    log.error("Analysis worker %d exited with code %s; starting another", proc.pid, proc.exitcode)
                    self.workers[number] = self._start_worker()
                    try:
                        with self.index.transaction() as db:
                            emit(db, "process.died", payload={"process": "analysis worker", "pid": proc.pid,
                                                              "exitcode": proc.exitcode, "replaced_by": self.workers[number].pid})
                    except IndexError_ as exc:
                        log.error("The process.died event could not be recorded: %s", exc)

    def supervise(self) -> None:
        """Replace any worker that died (a ``--role worker`` process calls this on its own clock)."""
        self._replace_dead_workers()

    def start(self, describe: bool = True) -> None:
        if describe:
            for route in self.config.routes:  # one line per rule: what the node will do, as configured
                log.info("%s", describe_route(route, self.config))
            if not self.config.routes:
                log.info("No routes configured: series are stored, none analysed or forwarded")
        if self.sender is not None:
            self.sender.start()
        if self.monitor is not None:
            self.monitor.start()
        if self.notifier is not None:
            self.notifier.start()
            log.info("Notifications: %d subscription(s) to %s", len(self.config.notifications.subscriptions),
                     ", ".join(sorted(self.config.notifications.targets)))
        # No analysing route, no jobs: listening-only and forward-only set-ups (and most tests)
        # start no model process.
        count = self.config.jobs.workers if self.runs_workers and any(r.pipeline for r in self.config.routes) else 0
        with self._lock:
            self.workers = [self._start_worker() for _ in range(count)]
        if count:
            log.info("%d analysis worker process(es): %s", count, ", ".join(str(p.pid) for p in self.workers))

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
        if self.notifier is not None:
            self.notifier.stop()
        if self.monitor is not None:
            self.monitor.stop()
        if self.sender is not None:
            self.sender.stop()
        if self._sender_index is not None:
            self._sender_index.close()
        for proc in self.workers:
            # A job in progress is abandoned: its lease expires and it runs again after restart.
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
