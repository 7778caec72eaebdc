"""Wiring: the one module that builds every stage and connects them into a running node.

Stages stay independent and testable alone; this module only constructs them from the
configuration, starts them in order (recover, listen, sweep) and stops them in reverse.

One listener process serves associations in threads (:class:`Node`); with more than one
listener (``node.workers``) the supervisor (supervisor.py) runs several behind one port. The
analysis workers and the sender are the downstream stages (downstream.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from pynetdicom import evt

from ..config import NodeConfig
from ..flow.completion import CompletionScheduler
from ..net.admission import Admission
from ..net.handoff import Receiver
from ..net.patches.pynetdicom_settings import register_server
from ..net.servers import AdmittedServer, HandedServer
from ..net.storage_scp import StorageSCP, build_ae
from ..net.tls import TlsAssociationServer, server_context
from ..storage.audit import AuditLog
from ..storage.index import Index
from ..storage.recovery import RecoveryReport, mark_clean_shutdown, recover
from ..storage.retention import Retention, RetentionScheduler
from ..storage.store import InstanceStore
from .downstream import Downstream

if TYPE_CHECKING:
    from ..web.app import WebServer

log = logging.getLogger(__name__)


def start_web(config: NodeConfig, index: Index, readiness: Callable[[], list[str]],
              audit: AuditLog | None = None, store: InstanceStore | None = None) -> WebServer | None:
    """The web service (web/app.py) when ``web.enabled``; a port it cannot bind is logged, not fatal:
    the DICOM listener matters more than its dashboard."""
    if not config.web.enabled:
        return None
    from ..web.app import WebServer

    web = WebServer(config, index, readiness, audit, store)
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


def start_requests(config: NodeConfig, index: Index, store: InstanceStore, audit: AuditLog) -> list[Any]:
    """The request runner and the pollers of ``sources`` (flow/request_runner.py, polling.py) when
    a peer may be queried; their modules (and the DICOMweb client) are loaded only then."""
    if not any(p.query for p in config.peers):
        return []
    from ..flow.polling import Poller
    from ..flow.request_runner import RequestRunner

    started: list[Any] = [RequestRunner(config, index, store, audit)]
    if config.sources:
        started.append(Poller(config, index))
    for task in started:
        task.start()
    log.info("Requests: retrieving from %s on request%s", ", ".join(p.name for p in config.peers if p.query),
             f"; polling {', '.join(s.peer for s in config.sources)}" if config.sources else "")
    return started


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
        #: Under a supervisor: where handed-over connections arrive (net/handoff.py); no socket of our own.
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
        self.requests: list[Any] = []
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
                                 self.audit, self.store)
            self.retention = start_retention(self.config, self.index, self.audit)
            self.requests = start_requests(self.config, self.index, self.store, self.audit)
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
        for task in self.requests:
            task.stop()
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
