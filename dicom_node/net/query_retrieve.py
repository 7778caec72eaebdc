"""Query/retrieve as an SCU (Study Root): C-FIND at study or series level, and retrieval of a
study by C-MOVE (the peer sends it to the node's own AE title, so the node's listener takes it
in like any C-STORE) or C-GET (the instances come back on the same association: no route from
the peer to the node is needed, and each is taken in here through storage/ingest.py).

Every answer the peer gives ends as a :class:`RetrieveReport` or a PeerError that carries the
peer's status: a refused association, a failure status (0xA701 out of resources, 0xA801 move
destination unknown, 0xC000 unable to process ...), a timeout.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ..config import Peer
from ..errors import DiskFullError, IndexError_, InvalidInstanceError, PeerError, StoreError
from ..storage.index import Index, Outcome, Receipt
from ..storage.ingest import ingest
from ..storage.store import InstanceStore
from .contexts import ACCEPTED_TRANSFER_SYNTAXES
from .patches.pynetdicom_settings import take_streamed_dataset
from .scu import associate

log = logging.getLogger(__name__)

#: Storage SOP classes a C-GET proposes to receive (one context each; with the C-GET context,
#: under pynetdicom's 128): images of every common modality, SEG, SR, presentation states, RT.
GET_STORAGE_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.130",
    "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.2",
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.20",
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.30",
    "1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.481.1", "1.2.840.10008.5.1.4.1.1.481.2",
]
#: The syntaxes each of those contexts offers: uncompressed first, then what the store keeps as is.
GET_TRANSFER_SYNTAXES = ACCEPTED_TRANSFER_SYNTAXES[:12]

_PENDING = (0xFF00, 0xFF01)


@dataclass
class RetrieveReport:
    """How a retrieval went: sub-operations as the peer counted them, and what the node stored."""

    completed: int = 0
    failed: int = 0
    warning: int = 0
    stored: int = 0
    duplicates: int = 0
    refused: list[str] = field(default_factory=list)
    status: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in (0x0000, 0xB000) and not self.refused and self.failed == 0


def _ae(local_title: str, timeout: float) -> AE:
    ae = AE(ae_title=local_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _identifier(level: str, keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def find(local_title: str, peer: Peer, level: str, keys: dict[str, str], timeout: float = 30.0,
         tls: ssl.SSLContext | None = None) -> list[Dataset]:
    """C-FIND (Study Root) at ``level`` (STUDY or SERIES); ``keys``: keyword -> value to match
    ('' asks for the attribute back). Returns the matches; PeerError carries a failure status."""
    ae = _ae(local_title, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = associate(ae, peer, tls)
    matches: list[Dataset] = []
    try:
        for status, identifier in assoc.send_c_find(_identifier(level, keys), StudyRootQueryRetrieveInformationModelFind):
            code = int(status.Status) if status is not None and "Status" in status else None
            if code is None:
                raise PeerError(f"{peer.name}: no answer to C-FIND (association lost or timed out)")
            if code in _PENDING:
                if identifier is not None:
                    matches.append(identifier)
            elif code != 0x0000:
                raise PeerError(f"{peer.name} answered C-FIND with status 0x{code:04X} "
                                f"{status.get('ErrorComment', '')}".strip())
    finally:
        if assoc.is_established:
            assoc.release()
    return matches


def _tally(report: RetrieveReport, status: Dataset | None, peer: Peer, what: str) -> int | None:
    code = int(status.Status) if status is not None and "Status" in status else None
    if code is None:
        raise PeerError(f"{peer.name}: no answer to {what} (association lost or timed out)")
    for name, attr in (("completed", "NumberOfCompletedSuboperations"), ("failed", "NumberOfFailedSuboperations"),
                       ("warning", "NumberOfWarningSuboperations")):
        if attr in status:
            setattr(report, name, int(getattr(status, attr)))
    return code


def _drive(assoc: Any, responses: Any, report: RetrieveReport, peer: Peer, what: str) -> tuple[int, str]:
    """Read a C-MOVE's or C-GET's responses to the end (counting its sub-operations), release the
    association, and return the final status and its Error Comment."""
    code, comment = 0xC000, ""
    try:
        for status, _ in responses:
            code = _tally(report, status, peer, what) or 0
            comment = str(status.get("ErrorComment", ""))
    finally:
        if assoc.is_established:
            assoc.release()
    return code, comment


def _final(report: RetrieveReport, code: int, peer: Peer, what: str, comment: str) -> RetrieveReport:
    report.status = code
    if code not in (0x0000, 0xB000):
        raise PeerError(f"{peer.name} answered {what} with status 0x{code:04X} {comment}".strip()
                        + f" ({report.completed} sent, {report.failed} failed)")
    return report


def move(local_title: str, peer: Peer, study_uid: str, destination: str, timeout: float = 60.0,
         tls: ssl.SSLContext | None = None, series_uid: str | None = None) -> RetrieveReport:
    """C-MOVE the study (or one series of it) from ``peer`` to the AE title ``destination``."""
    started = time.monotonic()
    ae = _ae(local_title, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    keys = {"StudyInstanceUID": study_uid, **({"SeriesInstanceUID": series_uid} if series_uid else {})}
    assoc = associate(ae, peer, tls)
    report = RetrieveReport()
    code, comment = _drive(assoc, assoc.send_c_move(_identifier("SERIES" if series_uid else "STUDY", keys), destination,
                                                    StudyRootQueryRetrieveInformationModelMove), report, peer, "C-MOVE")
    report.seconds = time.monotonic() - started
    report.stored = report.completed
    return _final(report, code, peer, "C-MOVE", comment)


class _GetReceiver:
    """C-GET's C-STORE sub-operations, each written as it came and taken in by ingest()."""

    def __init__(self, peer: Peer, local_title: str, store: InstanceStore, index: Index, report: RetrieveReport,
                 on_stored: Callable[[Any], None] | None) -> None:
        self.peer, self.local_title, self.store, self.index, self.report = peer, local_title, store, index, report
        self.on_stored = on_stored

    def handle(self, event: evt.Event) -> int:
        try:
            return self._handle(event)
        except Exception as exc:  # a sub-operation must get a status, and the retrieval go on
            log.exception("C-GET from %s: an instance could not be taken in", self.peer.name)
            self.report.refused.append(f"0xC211 unexpected error: {exc}")
            return 0xC211

    def _handle(self, event: evt.Event) -> int:
        # Streamed (this process runs a listener too, so chunked receive is on): the file is in
        # the store's .incoming already (the AE's incoming_dir) and is ingested where it lies.
        path = take_streamed_dataset(event.request)
        try:
            if path is None:
                path = self.store.incoming / f".get.{uuid.uuid4().hex}.part"
                with open(path, "wb") as handle:
                    handle.write(event.encoded_dataset())
            receipt = Receipt(calling_ae=self.peer.ae_title, called_ae=self.local_title, peer_address=str(self.peer.host),
                              received_at=time.time())
            taken = ingest(self.store, self.index, path, receipt)
        except InvalidInstanceError as exc:
            self.report.refused.append(f"0xC210 {exc}")
            return 0xC210
        except DiskFullError as exc:
            self.report.refused.append(f"0xA700 {exc}")
            return 0xA700
        except (StoreError, IndexError_, OSError) as exc:
            self.report.refused.append(f"0xA701 {exc}")
            return 0xA701
        finally:
            if path is not None and path.exists():
                os.unlink(path)
        self.report.stored += 1
        self.report.duplicates += taken.outcome is Outcome.DUPLICATE
        if self.on_stored is not None:
            self.on_stored(taken)
        return 0x0000


def get(local_title: str, peer: Peer, study_uid: str, store: InstanceStore, index: Index, timeout: float = 60.0,
        tls: ssl.SSLContext | None = None, on_stored: Callable[[Any], None] | None = None) -> RetrieveReport:
    """C-GET the study from ``peer``; every instance is durable and indexed before its
    sub-operation is answered Success (storage/ingest.py), recorded under the peer's AE title."""
    started = time.monotonic()
    ae = _ae(local_title, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in GET_STORAGE_CLASSES:
        ae.add_requested_context(sop_class, GET_TRANSFER_SYNTAXES)
    roles = [build_role(sop_class, scp_role=True) for sop_class in GET_STORAGE_CLASSES]
    ae.incoming_dir = store.incoming  # type: ignore[attr-defined]  # where a streamed sub-operation lands
    report = RetrieveReport()
    receiver = _GetReceiver(peer, local_title, store, index, report, on_stored)
    install_handlers = [(evt.EVT_C_STORE, receiver.handle)]
    if not peer.has_dimse:
        raise PeerError(f"{peer.name} has no DIMSE address: retrieve it by WADO-RS")
    if peer.tls and tls is None:
        raise PeerError(f"{peer.name} needs TLS (tls: true) and node.tls is not configured")
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=roles, evt_handlers=install_handlers,
                         tls_args=(tls, peer.server_hostname or peer.host) if peer.tls and tls else None)
    if not assoc.is_established:
        raise PeerError(f"{peer.name} ({peer.address}) {'rejected' if assoc.is_rejected else 'did not accept'} "
                        "the C-GET association")
    code, comment = _drive(assoc, assoc.send_c_get(_identifier("STUDY", {"StudyInstanceUID": study_uid}),
                                                   StudyRootQueryRetrieveInformationModelGet), report, peer, "C-GET")
    report.seconds = time.monotonic() - started
    return _final(report, code, peer, "C-GET", comment)

