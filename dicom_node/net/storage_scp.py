"""The DICOM listener: a pynetdicom AE answering C-ECHO and C-STORE.

Durability contract: a C-STORE is answered Success only after the instance is in its final
place (fsync + rename) and its index row is committed. Anything else is a failure status with
a log line, and the sender keeps its copy:

    0xA700  out of resources: free space under the watermark, or the disk is full
    0xA701  out of resources: the file could not be written or renamed
    0xA702  out of resources: the index could not record the instance
    0xC210  cannot understand: not a readable dataset, truncated, or required UIDs missing
    0xC211  cannot understand: an unexpected error (logged with its traceback)

Every dataset is streamed to disk as it arrives (pynetdicom's chunked receive), into the
store's hidden ``.incoming`` folder, so memory stays bounded whatever the instance size and
the final rename never copies.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association

from .. import counters
from ..config import NodeConfig
from ..errors import DiskFullError, IndexError_, InvalidInstanceError, StoreError
from ..logs import bind_log_context
from ..storage.audit import AuditLog
from ..storage.events import emit_alert
from ..storage.header import read_header
from ..storage.index import Index, Outcome, Receipt
from ..storage.ingest import ingest
from ..storage.store import InstanceStore
from .contexts import storage_contexts, verification_context
from .node_ae import NodeAE
from .patches import pynetdicom_tuning
from .patches.pynetdicom_settings import configure_listener, open_dataset_fd

log = logging.getLogger(__name__)


STATUS_SUCCESS = 0x0000


STATUS_OUT_OF_RESOURCES = 0xA700


STATUS_STORE_FAILED = 0xA701


STATUS_INDEX_FAILED = 0xA702


STATUS_CANNOT_UNDERSTAND = 0xC210


STATUS_UNEXPECTED = 0xC211


@dataclass
class _AssociationStats:
    calling_ae: str
    called_ae: str
    address: str
    port: int
    started: float
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes: int = 0
    outcome: str = "open"
    failures: list[str] = field(default_factory=list)
    association: Any = None
    closed: bool = False
    #: Study Instance UID -> {"patient_id", "sop_classes": {SOP Class UID: instances}} stored.
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)


class StorageSCP:
    """The C-STORE / C-ECHO handlers and the association bookkeeping for the audit log."""

    def __init__(self, store: InstanceStore, index: Index, audit: AuditLog, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.index = index
        self.audit = audit
        self.clock = clock
        # Keyed by id(association), from EVT_ACCEPTED until its audit line is written.
        self._stats: dict[int, _AssociationStats] = {}
        self._finish_lock = threading.Lock()

    # -- handlers -------------------------------------------------------------------------

    def handlers(self) -> list[tuple[Any, ...]]:
        return [
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_ended),
            (evt.EVT_ABORTED, self.on_ended),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
        ]

    def on_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def on_store(self, event: evt.Event) -> int | Dataset:
        assoc = event.assoc
        stats = self._stats.get(id(assoc))
        requested = str(event.request.AffectedSOPInstanceUID)
        started = time.perf_counter()
        status, note, size = self._store(event, assoc)
        calling = stats.calling_ae if stats is not None else str(assoc.requestor.ae_title).strip()
        counters.CSTORE_SECONDS.observe(time.perf_counter() - started)
        if status == STATUS_SUCCESS:
            counters.INSTANCES_RECEIVED.labels(calling).inc()
            counters.BYTES_RECEIVED.labels(calling).inc(size)
        else:
            counters.INSTANCES_REFUSED.labels(calling, f"0x{status:04X}").inc()
        if stats is not None:
            if status == STATUS_SUCCESS:
                if note == Outcome.DUPLICATE.value:
                    stats.duplicates += 1
                else:
                    stats.stored += 1
                stats.bytes += size
            else:
                stats.failed += 1
                if len(stats.failures) < 20:
                    stats.failures.append(f"{requested}: 0x{status:04X} {note}")
        if status == STATUS_SUCCESS:
            return status
        # Tell the sender why, not only that: Error Comment is LO, at most 64 characters.
        response = Dataset()
        response.Status = status
        response.ErrorComment = note[:64]
        return response

    def _store(self, event: evt.Event, assoc: Association) -> tuple[int, str, int]:
        requested = str(event.request.AffectedSOPInstanceUID)
        caller = assoc.requestor
        try:
            received = Path(event.dataset_path)
            header = read_header(received)
            bind_log_context(study_uid=header.study_instance_uid, series_uid=header.series_instance_uid,
                             sop_instance_uid=header.sop_instance_uid)
            if header.sop_instance_uid != requested:
                log.warning("C-STORE from %s: Affected SOP Instance UID %s differs from the dataset's %s; stored under the dataset's",
                            caller.ae_title, requested, header.sop_instance_uid)
            receipt = Receipt(
                calling_ae=str(caller.ae_title).strip(),
                called_ae=str(assoc.acceptor.ae_title).strip(),
                peer_address=str(caller.address),
                received_at=self.clock(),
            )
            taken = ingest(self.store, self.index, received, receipt, fd=open_dataset_fd(event.request), header=header)
            stats = self._stats.get(id(assoc))
            if stats is not None:  # for the audit record: what was transferred, per study (DICOM audit message)
                study = stats.studies.setdefault(header.study_instance_uid, {"patient_id": header.patient_id, "sop_classes": {}})
                study["sop_classes"][header.sop_class_uid] = study["sop_classes"].get(header.sop_class_uid, 0) + 1
            return STATUS_SUCCESS, taken.outcome.value, taken.size
        except DiskFullError as exc:
            log.error("Refusing %s from %s with 0xA700: %s", requested, caller.ae_title, exc)
            return STATUS_OUT_OF_RESOURCES, str(exc), 0
        except InvalidInstanceError as exc:
            log.error("Refusing %s from %s with 0xC210: %s", requested, caller.ae_title, exc)
            return STATUS_CANNOT_UNDERSTAND, str(exc), 0
        except StoreError as exc:
            log.error("Failed to store %s from %s (0xA701): %s", requested, caller.ae_title, exc)
            return STATUS_STORE_FAILED, str(exc), 0
        except IndexError_ as exc:
            log.error("Failed to index %s from %s (0xA702): %s", requested, caller.ae_title, exc)
            return STATUS_INDEX_FAILED, str(exc), 0
        except Exception as exc:  # the handler must answer a status, never die silently
            log.exception("Unexpected error storing %s from %s (0xC211)", requested, caller.ae_title)
            return STATUS_UNEXPECTED, f"unexpected error: {exc}", 0

    # -- association bookkeeping ----------------------------------------------------------

    def on_conn_open(self, event: evt.Event) -> None:
        """Small instances are ping-pong; Nagle would hold each response ~40 ms."""
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def on_tls_refused(self, address: str, port: int, reason: str) -> None:
        """A connection to the TLS port that did not become a TLS session (tls.py)."""
        counters.ASSOCIATIONS.labels("refused-tls").inc()
        self.audit.write("association", outcome="rejected", reason=f"TLS: {reason}", address=address, port=port,
                         calling_ae="", called_ae="")
        emit_alert(self.index, "security.alert", f"tls_refused:{address}",
                   {"alert": "tls_refused", "address": address, "reason": reason})

    def on_admission_refused(self, address: str, port: int, reason: str) -> None:
        """A connection admission.Admission refused before it became an association."""
        counters.ASSOCIATIONS.labels("rejected").inc()
        self.audit.write("association", outcome="rejected", reason=reason, address=address, port=port,
                         calling_ae="", called_ae="")

    def on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        # The association's thread logs about this association from now on (logs.format json).
        bind_log_context(association=f"{assoc.requestor.address}:{assoc.requestor.port}",
                         calling_ae=str(assoc.requestor.ae_title).strip(), called_ae=str(assoc.acceptor.ae_title).strip())
        self._stats[id(assoc)] = _AssociationStats(
            calling_ae=str(assoc.requestor.ae_title).strip(),
            called_ae=str(assoc.acceptor.ae_title).strip(),
            address=str(assoc.requestor.address),
            port=int(assoc.requestor.port),
            started=self.clock(),
            association=assoc,
        )

    def drain(self, timeout: float) -> None:
        """Wait (bounded) for accepted associations to end and write their audit lines."""
        deadline = time.monotonic() + timeout
        for stats in list(self._stats.values()):
            assoc = stats.association
            for thread in (assoc, getattr(assoc, "dul", None)):
                if isinstance(thread, threading.Thread) and thread.is_alive():
                    thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for key in list(self._stats):
            self._finish(key)  # whatever is left ended (or was cut off by the stop)

    def on_rejected(self, event: evt.Event) -> None:
        assoc = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        address = str(assoc.requestor.address)
        ae = assoc.ae
        called = str(getattr(assoc.requestor.primitive, "called_ae_title", "") or "").strip()
        refusal = getattr(assoc, "dicom_node_refusal", None)
        if isinstance(ae, NodeAE) and ae.reject_unknown and refusal:
            reason = refusal
        elif isinstance(ae, NodeAE) and ae.require_called and called not in ae.titles:
            reason = f"called AE title {called!r} not recognised"
        else:
            reason = "local limit exceeded or called AE title not recognised"
        log.warning("Rejected association from %s at %s: %s", calling, address, reason)
        counters.ASSOCIATIONS.labels("rejected").inc()
        self.audit.write(
            "association", outcome="rejected", reason=reason, calling_ae=calling,
            called_ae=called or str(assoc.acceptor.ae_title).strip(), address=address, port=assoc.requestor.port,
        )
        emit_alert(self.index, "security.alert", f"association_rejected:{address}",
                   {"alert": "association_rejected", "address": address, "calling_ae": calling, "reason": reason})

    # An association's audit line needs both its end (EVT_RELEASED / EVT_ABORTED, from the
    # association thread) and its connection's close (EVT_CONN_CLOSE, from the DUL thread); they
    # race, so the line is written by whichever comes second. A connection that closes with no
    # end event (the peer vanished) is written as aborted after CLOSE_GRACE_SECONDS.
    CLOSE_GRACE_SECONDS = 2.0

    def on_ended(self, event: evt.Event) -> None:
        stats = self._stats.get(id(event.assoc))
        if stats is None:
            return
        stats.outcome = "released" if event.event is evt.EVT_RELEASED else "aborted"
        if stats.closed:
            self._finish(id(event.assoc))

    def on_conn_close(self, event: evt.Event) -> None:
        key = id(event.assoc)
        stats = self._stats.get(key)
        if stats is None:
            return
        stats.closed = True
        if stats.outcome != "open":
            self._finish(key)
        else:
            timer = threading.Timer(self.CLOSE_GRACE_SECONDS, self._finish, args=(key,))
            timer.daemon = True
            timer.start()

    def _finish(self, key: int) -> None:
        with self._finish_lock:
            stats = self._stats.pop(key, None)
        if stats is None:
            return  # already written
        if stats.outcome == "open":
            stats.outcome = "aborted"  # the connection went away without a release
        fields = {
            "outcome": stats.outcome, "calling_ae": stats.calling_ae, "called_ae": stats.called_ae,
            "address": stats.address, "port": stats.port, "instances_stored": stats.stored,
            "instances_duplicate": stats.duplicates, "instances_failed": stats.failed, "bytes": stats.bytes,
            "duration_s": round(self.clock() - stats.started, 3), "pid": os.getpid(),
        }
        if stats.failures:
            fields["failures"] = stats.failures
        if stats.studies:
            fields["studies"] = [{"study_uid": uid, **study} for uid, study in stats.studies.items()]
        counters.ASSOCIATIONS.labels(stats.outcome).inc()
        self.audit.write("association", **fields)
        log.info("Association from %s (%s) %s: %d stored, %d duplicate, %d failed",
                 stats.calling_ae, stats.address, stats.outcome, stats.stored, stats.duplicates, stats.failed,
                 extra={"association": f"{stats.address}:{stats.port}", "calling_ae": stats.calling_ae,
                        "called_ae": stats.called_ae})


def build_ae(config: NodeConfig, store: InstanceStore, log_pdus: bool = False) -> NodeAE:
    """The configured listener AE (not yet listening); ``log_pdus`` keeps pynetdicom's
    per-PDU debug handlers."""
    configure_listener(log_pdus, config.node.pdu_timeout_seconds)
    if config.node.fast_paths:
        pynetdicom_tuning.install()
    else:
        pynetdicom_tuning.install_fixes()
        pynetdicom_tuning.uninstall()
    ae = NodeAE(
        ae_title=config.node.ae_title,
        callers=config.callers(),
        reject_unknown=config.node.reject_unknown_callers,
        incoming_dir=store.incoming,
        start_writeback=store.syncs,
        other_titles=config.node.ae_titles,
        require_called=config.node.require_called_ae_title,
    )
    ae.supported_contexts = storage_contexts() + [verification_context()]
    # Large PDVs cut per-PDU cost; 1 MiB by default (not unlimited) keeps a sender that honours
    # it from making us hold a whole instance in one PDU. DCMTK sends at most 128 KiB anyway.
    ae.maximum_pdu_size = config.node.max_pdu_bytes
    ae.maximum_associations = config.node.max_associations
    ae.network_timeout = config.node.network_timeout_seconds
    ae.acse_timeout = 30
    ae.dimse_timeout = config.node.network_timeout_seconds
    return ae
