"""Retrieving a study from a DICOMweb peer by WADO-RS into the node: each instance, as the
multipart answer streams in, written to the store's ``.incoming`` folder and taken in by
storage/ingest.py (durable and indexed, recorded under the peer's AE title as its source)."""

from __future__ import annotations

import logging
import os
import time
import uuid

import pydicom

from ..config import Peer
from ..errors import DiskFullError, IndexError_, InvalidInstanceError, StoreError
from ..net.query_retrieve import RetrieveReport
from ..storage.index import Index, Outcome, Receipt
from ..storage.ingest import ingest
from ..storage.store import InstanceStore
from .client import DicomwebPeerClient

log = logging.getLogger(__name__)


def wado_retrieve(peer: Peer, study_uid: str, store: InstanceStore, index: Index, local_title: str) -> RetrieveReport:
    """WADO-RS the whole study from ``peer``; PeerError when the peer refuses or cannot be reached."""
    started = time.monotonic()
    report = RetrieveReport()
    client = DicomwebPeerClient(peer)
    try:
        for ds in client.iter_study(study_uid):
            report.completed += 1
            path = store.incoming / f".wado.{uuid.uuid4().hex}.part"
            try:
                pydicom.dcmwrite(path, ds, enforce_file_format=True)
                receipt = Receipt(calling_ae=peer.ae_title, called_ae=local_title,
                                  peer_address=peer.dicomweb.url if peer.dicomweb else "", received_at=time.time())
                taken = ingest(store, index, path, receipt)
            except (InvalidInstanceError, DiskFullError, StoreError, IndexError_, OSError, ValueError) as exc:
                report.failed += 1
                report.refused.append(f"{ds.get('SOPInstanceUID', '?')}: {exc}")
                log.error("WADO-RS from %s: instance %s not taken: %s", peer.name, ds.get("SOPInstanceUID", "?"), exc)
                continue
            finally:
                if path.exists():
                    os.unlink(path)
            report.stored += 1
            report.duplicates += taken.outcome is Outcome.DUPLICATE
    finally:
        client.close()
    report.seconds = time.monotonic() - started
    return report
