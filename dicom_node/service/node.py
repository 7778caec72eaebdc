"""Wiring: the one module that builds every stage and connects them into a running node.

Stages stay independent and testable alone; this module only constructs them from the
configuration, starts them in order (recover, listen, sweep) and stops them in reverse.

One listener process serves associations in threads; with more than one listener (``node.workers``)
a supervisor accepts every connection on the port and hands it to the listener process with the
fewest open (``dispatch.py``, SCM_RIGHTS), while recovery and the completion sweep run once, in
the supervisor.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from pynetdicom import evt
from pynetdicom.transport import ThreadedAssociationServer

from ..config import NodeConfig
from ..errors import NodeError
from ..flow.completion import CompletionScheduler
from ..flow.delivery import Sender, SenderScheduler
from ..flow.job_engine import job_queue
from ..flow.outbox import Outbox
from ..flow.route_check import describe_route
from ..flow.routing import route_completed
from ..flow.worker import worker_main
from ..logs import setup_logging
from ..net.admission import Admission
from ..net.handoff import Dispatcher, Receiver
from ..net.patches.pynetdicom_settings import register_server
from ..net.storage_scp import StorageSCP, build_ae
from ..net.tls import HandshakeServerMixin, TlsAssociationServer, server_context
from ..process import StopFlag, die_with_parent, name_process
from ..storage.audit import AuditLog
from ..storage.index import Index
from ..storage.recovery import RecoveryReport, mark_clean_shutdown, recover
from ..storage.retention import Retention, RetentionScheduler
from ..storage.store import InstanceStore

if TYPE_CHECKING:
    from ..web.app import WebServer

log = logging.getLogger(__name__)


class HandedServer(HandshakeServerMixin, ThreadedAssociationServer):  # type: ignore[misc]
    """pynetdicom's threaded server for connections the supervisor accepted and handed over
    (dispatch.Receiver calls process_request): it binds and listens on nothing itself."""

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass


class AdmittedServer(ThreadedAssociationServer):  # type: ignore[misc]
    """pynetdicom's threaded server whose accepted connections wait in admission.Admission until
    their A-ASSOCIATE-RQ is whole; only then does pynetdicom start an association for them."""

    admission: Admission | None = None
    #: socketserver listens with a backlog of 5: a burst of connections would wait in SYN retries
    #: (seconds) before the room ever saw them.
    request_queue_size = 128

    def process_request(self, request: Any, client_address: Any) -> None:
        assert self.admission is not None
        self.admission.offer(request, client_address)

    def admitted(self, conn: socket.socket, address: Any, tls: bool) -> None:
        super().process_request(conn, address)


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


def start_web(config: NodeConfig, index: Index, readiness: Callable[[], list[str]],
              audit: AuditLog | None = None) -> WebServer | None:
    """The web service (web.py) when ``web.enabled``; a port it cannot bind is logged, not fatal:
    the DICOM listener matters more than its dashboard."""
    if not config.web.enabled:
        return None
    from ..web.app import WebServer

    web = WebServer(config, index, readiness, audit)
    try:
        web.start()
    except OSError as exc:
        log.error("Web service not started: %s", exc)
        return None
    return web


def start_retention(config: NodeConfig, index: Index, audit: AuditLog) -> RetentionScheduler | None:
    """The retention passes (retention.py) when ``retention.enabled``."""
    if not config.retention.enabled:
        return None
    scheduler = RetentionScheduler(Retention(config, index, audit), config.retention.interval_seconds)
    scheduler.start()
    log.info("Retention: studies %s, results %s, watermark %s; every %.0f s",
             f"after {config.retention.max_age_days:g} days" if config.retention.max_age_days else "kept",
             f"after {config.retention.results_max_age_days:g} days" if config.retention.results_max_age_days else "kept",
             f"{config.retention.disk_free_watermark_mb} MB free" if config.retention.disk_free_watermark_mb else "none",
             config.retention.interval_seconds)
    return scheduler


class Node:
    """A listener process: DICOM server + durable store + index (+ recovery and sweep when it
    runs alone, which is what tests and single-worker deployments use). ``role``: ``all`` also
    runs the sender and the analysis workers; ``listener`` leaves them to ``serve --role
    worker|sender`` processes."""

    #: How long stop() waits for open associations to end before aborting them.
    DRAIN_SECONDS = 10.0

    def __init__(self, config: NodeConfig, *, standalone: bool = True, log_pdus: bool = False,
                 channel: Connection | None = None, role: str = "all") -> None:
        self.config = config
        self.standalone = standalone
        #: Under a supervisor: where handed-over connections arrive (dispatch.py); no socket of our own.
        self.channel = channel
        self.store = InstanceStore(
            config.storage.path, config.storage.durability, min_free_bytes=config.storage.min_free_mb * 2**20
        )
        # WAL + synchronous=NORMAL: a commit survives a crash of the node, not a power cut. The
        # storage folder (fsynced per file) is the source of truth: after any unclean stop,
        # recovery re-indexes what the index lacks, so an extra fsync per commit buys nothing.
        self.index = Index(config.index.location, synchronous="NORMAL")
        self.audit = AuditLog.from_config(config)
        self.scp = StorageSCP(self.store, self.index, self.audit)
        self.ae = build_ae(config, self.store, log_pdus=log_pdus)
        self.downstream = Downstream(config, self.index, self.audit, sender=role == "all", workers=role == "all") \
            if standalone else None
        self.completion = CompletionScheduler(self.index, config.completion,
                                              after_sweep=self.downstream.route if self.downstream else None)
        self.web: WebServer | None = None
        self.retention: RetentionScheduler | None = None
        self.server: Any = None
        self.tls_server: Any = None
        self.admission: Admission | None = None
        self.recovery: RecoveryReport | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0): the plain one, or the TLS
        one when the plain port is off."""
        return int(self.server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The bound TLS port (standalone), None without TLS."""
        return int(self.tls_server.server_address[1]) if self.tls_server is not None else None

    def _set_up_tls(self, server: Any) -> None:
        tls = self.config.node.tls
        if tls is None:
            return
        server.tls_context = server_context(tls)
        server.handshake_timeout = tls.handshake_timeout_seconds
        server.on_refused = self.scp.on_tls_refused
        server.max_handshakes_per_address = self.config.node.max_pending_per_address

    def start(self) -> None:
        if self.standalone:
            self.recovery = recover(self.store, self.index)
        address = (self.config.node.host, self.config.node.port)
        if self.channel is not None:
            receiver = Receiver(self.channel)
            handlers = [*self.scp.handlers(), (evt.EVT_CONN_CLOSE, receiver.closed)]
            self.server = self.ae.make_server(address, evt_handlers=handlers, server_class=HandedServer)
            self._set_up_tls(self.server)
            receiver.serve(self.server)
        else:
            if self.config.node.plain:
                self.server = self.ae.make_server(address, evt_handlers=self.scp.handlers(), server_class=AdmittedServer)
                threading.Thread(target=self.server.serve_forever, name="dicom-node-accept", daemon=True).start()
                register_server(self.ae, self.server)  # so ae.shutdown() stops it, as start_server would
                self.admission = Admission(self.server.admitted, request_seconds=self.config.node.association_request_seconds,
                                           max_pending_per_address=self.config.node.max_pending_per_address,
                                           on_refused=self.scp.on_admission_refused)
                self.server.admission = self.admission
                self.admission.start()
            if self.config.node.tls is not None:
                self.tls_server = self.ae.make_server((self.config.node.host, self.config.node.tls.port),
                                                      evt_handlers=self.scp.handlers(), server_class=TlsAssociationServer)
                self._set_up_tls(self.tls_server)
                threading.Thread(target=self.tls_server.serve_forever, name="dicom-node-tls-accept", daemon=True).start()
                register_server(self.ae, self.tls_server)  # so ae.shutdown() stops it with the plain one
                self.server = self.server or self.tls_server
                log.info("DICOM TLS on %s:%d", self.config.node.host, self.tls_port)
        if self.standalone:
            self.completion.start()
        if self.downstream is not None:
            self.downstream.start()
        if self.standalone:
            self.web = start_web(self.config, self.index, lambda: [] if self.server is not None else ["listener not started"],
                                 self.audit)
            self.retention = start_retention(self.config, self.index, self.audit)
        self.audit.write("listener_started", ae_title=self.config.node.ae_title, host=self.config.node.host,
                         port=self.port, pid=os.getpid())
        log.info("%s listening on %s:%d (pid %d), storing to %s", self.config.node.ae_title, self.config.node.host,
                 self.port, os.getpid(), self.store.root)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.web is not None:
            self.web.stop()
        if self.retention is not None:
            self.retention.stop()
        self.completion.stop()
        if self.downstream is not None:
            self.downstream.stop()
        if self.channel is not None:
            self.channel.close()  # no new associations (the supervisor stopped handing them over)
            self.server.server_close()
        elif self.server is not None:
            self.server.shutdown()  # no new associations
        if self.admission is not None:
            self.admission.stop()
        # Let associations in flight finish (their audit lines included) before aborting any.
        self.scp.drain(self.DRAIN_SECONDS)
        self.ae.shutdown()
        if self.standalone:
            mark_clean_shutdown(self.index)
        self.audit.write("listener_stopped", ae_title=self.config.node.ae_title, pid=os.getpid())
        self.audit.close()
        self.index.close()

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listener_main(config: NodeConfig, ready: Any, stop: StopFlag, log_pdus: bool, channel: Connection) -> None:
    """A listener process under the supervisor: serve until told to stop."""
    die_with_parent()
    name_process("dn-listener")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which stops us
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    setup_logging(log_pdus, with_pid=True, json_lines=config.logs.format == "json")
    try:
        node = Node(config, standalone=False, log_pdus=log_pdus, channel=channel)
        node.start()
    except Exception as exc:
        ready.put(("error", f"{type(exc).__name__}: {exc}"))
        raise
    ready.put(("ready", os.getpid()))
    while not stop.wait(1.0):
        pass
    node.stop()


def _bound(host: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    return listener


class Supervisor:
    """Several listener processes behind one port (it accepts, dispatch.py hands each
    connection to the least busy), plus recovery and the completion sweep."""

    def __init__(self, config: NodeConfig, workers: int, log_pdus: bool = False, role: str = "all") -> None:
        self.config = config
        self.workers = workers
        self.log_pdus = log_pdus
        self.store = InstanceStore(config.storage.path, config.storage.durability, min_free_bytes=config.storage.min_free_mb * 2**20)
        self.index = Index(config.index.location, synchronous="NORMAL")
        self.audit = AuditLog.from_config(config)
        self.downstream = Downstream(config, self.index, self.audit, sender=role == "all", workers=role == "all")
        self.completion = CompletionScheduler(self.index, config.completion, after_sweep=self.downstream.route)
        self.recovery: RecoveryReport | None = None
        self._context = multiprocessing.get_context("spawn")
        # Lock-free: a listener killed while waiting must not block the others' stop (process.py).
        self._stop = StopFlag(self._context)
        self._procs: list[Any] = []
        self.dispatcher: Dispatcher | None = None
        self.port = config.node.port
        self.tls_port: int | None = None
        self.web: WebServer | None = None
        self.retention: RetentionScheduler | None = None

    def start(self) -> None:
        self.recovery = recover(self.store, self.index)
        # Bound now (port 0 picks one), listening only once every listener process is ready:
        # until then a caller is refused, not left waiting in the backlog of a node still starting.
        listeners: list[tuple[socket.socket, bool]] = []
        if self.config.node.plain:
            listeners.append((_bound(self.config.node.host, self.config.node.port), False))
        if self.config.node.tls is not None:
            server_context(self.config.node.tls)  # a certificate that does not load stops the start, here
            listeners.append((_bound(self.config.node.host, self.config.node.tls.port), True))
            self.tls_port = listeners[-1][0].getsockname()[1]
        self.port = listeners[0][0].getsockname()[1]
        node = self.config.node.model_copy(update={"port": self.port})
        if node.tls is not None:
            node = node.model_copy(update={"tls": node.tls.model_copy(update={"port": self.tls_port})})
        worker_config = self.config.model_copy(update={"node": node})
        ready = self._context.Queue()
        channels = []
        try:
            for _ in range(self.workers):
                ours, theirs = self._context.Pipe(duplex=True)
                proc = self._context.Process(target=_listener_main, args=(worker_config, ready, self._stop, self.log_pdus, theirs),
                                             daemon=False)
                proc.start()
                theirs.close()
                channels.append(ours)
                self._procs.append(proc)
            for _ in range(self.workers):
                kind, detail = ready.get(timeout=60)
                if kind != "ready":
                    raise NodeError(f"a listener process failed to start: {detail}")
        except BaseException:
            for listener, _ in listeners:
                listener.close()
            self.stop(clean=False)
            raise
        for listener, _ in listeners:
            listener.listen(128)
        self.dispatcher = Dispatcher(listeners, channels, [int(p.pid) for p in self._procs],
                                     max_associations=self.config.node.max_associations, on_refused=self._refused,
                                     request_seconds=self.config.node.association_request_seconds,
                                     max_pending_per_address=self.config.node.max_pending_per_address)
        self.dispatcher.start()
        self.completion.start()
        self.downstream.start()
        self.web = start_web(self.config, self.index, self._readiness, self.audit)
        self.retention = start_retention(self.config, self.index, self.audit)
        log.info("%d listener processes on %s:%d%s: %s", self.workers, self.config.node.host, self.port,
                 f" (DICOM TLS on {self.tls_port})" if self.tls_port and self.config.node.plain else "",
                 ", ".join(str(p.pid) for p in self._procs))

    def _refused(self, address: str, port: int, reason: str) -> None:
        """A connection the dispatcher refused over node.max_associations: audited and counted."""
        from .. import counters

        counters.ASSOCIATIONS.labels("rejected").inc()
        self.audit.write("association", outcome="rejected", reason=reason, address=address, port=port,
                         calling_ae="", called_ae="")

    def _readiness(self) -> list[str]:
        """What keeps the node from taking studies: a listener process that died."""
        dead = [str(p.pid) for p in self._procs if not p.is_alive()]
        return [f"listener process(es) {', '.join(dead)} not running"] if dead else []

    def stop(self, clean: bool = True) -> None:
        if self.web is not None:
            self.web.stop()
        if self.retention is not None:
            self.retention.stop()
        self.completion.stop()
        self.downstream.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()  # no new associations
        self._stop.set()
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                log.error("Listener process %d did not stop in 30 s; killing it", proc.pid)
                proc.kill()
                proc.join(timeout=10)
                clean = False
        if clean and all(p.exitcode == 0 for p in self._procs):
            mark_clean_shutdown(self.index)
        self.audit.close()
        self.index.close()
