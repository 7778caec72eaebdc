"""Several listener processes behind one port: the supervisor binds it, accepts every connection
and hands it to the listener process with the fewest open (net/handoff.py, SCM_RIGHTS), while
recovery, the completion sweep, routing, the web service and the downstream stages run once, here."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from ..config import NodeConfig
from ..errors import NodeError
from ..flow.completion import CompletionScheduler
from ..logs import setup_logging
from ..net.handoff import HandOff
from ..net.tls import server_context
from ..periodic import PeriodicTask
from ..process import StopFlag, die_with_parent, name_process
from ..storage.audit import AuditLog
from ..storage.events import emit
from ..storage.index import Index
from ..storage.recovery import RecoveryReport, mark_clean_shutdown, recover
from ..storage.retention import RetentionScheduler
from ..storage.store import InstanceStore
from .downstream import Downstream
from .node import Node, start_requests, start_retention, start_web

if TYPE_CHECKING:
    from ..web.app import WebServer

log = logging.getLogger(__name__)


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
    """Several listener processes behind one port (it accepts, net/handoff.py hands each
    connection to the least busy), plus recovery and the completion sweep."""

    def __init__(self, config: NodeConfig, listeners: int, log_pdus: bool = False, role: str = "all") -> None:
        self.config = config
        #: Listener processes behind the port (``node.workers``; not the analysis workers).
        self.listener_count = listeners
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
        self.handoff: HandOff | None = None
        self.port = config.node.port
        self.tls_port: int | None = None
        self.web: WebServer | None = None
        self.retention: RetentionScheduler | None = None
        self.requests: list[Any] = []
        self._reported_dead: set[int] = set()
        self._watch = PeriodicTask("listener-watch", self._watch_listeners, 5.0)

    def _watch_listeners(self) -> None:
        """A listener process that died (the others go on taking associations; /ready names it)
        is logged and recorded as a ``process.died`` event, once."""
        if self._stop.is_set():
            return
        for proc in self._procs:
            if not proc.is_alive() and proc.pid not in self._reported_dead:
                self._reported_dead.add(proc.pid)
                log.error("Listener process %d exited with code %s; the other listeners go on", proc.pid, proc.exitcode)
                try:
                    with self.index.transaction() as db:
                        emit(db, "process.died", payload={"process": "listener", "pid": proc.pid, "exitcode": proc.exitcode,
                                                          "replaced_by": None})
                except NodeError as exc:
                    log.error("The process.died event could not be recorded: %s", exc)

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
            for _ in range(self.listener_count):
                ours, theirs = self._context.Pipe(duplex=True)
                proc = self._context.Process(target=_listener_main, args=(worker_config, ready, self._stop, self.log_pdus, theirs),
                                             daemon=False)
                proc.start()
                theirs.close()
                channels.append(ours)
                self._procs.append(proc)
            for _ in range(self.listener_count):
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
        self.handoff = HandOff(listeners, channels, [int(p.pid) for p in self._procs],
                                     max_associations=self.config.node.max_associations, on_refused=self._refused,
                                     request_seconds=self.config.node.association_request_seconds,
                                     max_pending_per_address=self.config.node.max_pending_per_address)
        self.handoff.start()
        self.completion.start()
        self.downstream.start()
        self.web = start_web(self.config, self.index, self._readiness, self.audit, self.store)
        self.retention = start_retention(self.config, self.index, self.audit)
        self.requests = start_requests(self.config, self.index, self.store, self.audit)
        self._watch.start()
        log.info("%d listener processes on %s:%d%s: %s", self.listener_count, self.config.node.host, self.port,
                 f" (DICOM TLS on {self.tls_port})" if self.tls_port and self.config.node.plain else "",
                 ", ".join(str(p.pid) for p in self._procs))

    def _refused(self, address: str, port: int, reason: str) -> None:
        """A connection the hand-off refused over node.max_associations: audited and counted."""
        from .. import counters

        log.warning("Refused a connection from %s:%d: %s", address, port, reason)
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
        for task in self.requests:
            task.stop()
        self._watch.stop()
        self.completion.stop()
        self.downstream.stop()
        if self.handoff is not None:
            self.handoff.stop()  # no new associations
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
