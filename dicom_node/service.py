"""Wiring: the one module that builds every stage and connects them into a running node.

Stages stay independent and testable alone; this module only constructs them from the
configuration, starts them in order (recover, listen, sweep) and stops them in reverse.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .audit import AuditLog
from .completion import CompletionScheduler
from .config import Durability, NodeConfig
from .index import Index
from .recovery import RecoveryReport, mark_clean_shutdown, recover
from .scp import StorageSCP, build_ae
from .store import InstanceStore

log = logging.getLogger(__name__)


class Node:
    """A running DICOM node: listener + durable store + index + completion sweep."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.store = InstanceStore(
            config.storage.path, config.storage.durability, min_free_bytes=config.storage.min_free_mb * 2**20
        )
        synchronous = "FULL" if config.storage.durability is Durability.FSYNC else "NORMAL"
        self.index = Index(config.index.path, synchronous=synchronous)
        self.audit = AuditLog(config.audit.path)
        self.scp = StorageSCP(self.store, self.index, self.audit)
        self.ae = build_ae(config, self.store)
        self.completion = CompletionScheduler(self.index, config.completion)
        self.server: Any = None
        self.recovery: RecoveryReport | None = None
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0)."""
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.recovery = recover(self.store, self.index)
        self.server = self.ae.start_server(
            (self.config.node.host, self.config.node.port), block=False, evt_handlers=self.scp.handlers()
        )
        self.completion.start()
        self.audit.write("node_started", ae_title=self.config.node.ae_title, host=self.config.node.host, port=self.port)
        log.info("%s listening on %s:%d, storing to %s", self.config.node.ae_title, self.config.node.host, self.port, self.store.root)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.completion.stop()
        if self.server is not None:
            self.server.shutdown()
        self.ae.shutdown()
        mark_clean_shutdown(self.index)
        self.audit.write("node_stopped", ae_title=self.config.node.ae_title)
        self.audit.close()
        self.index.close()

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
