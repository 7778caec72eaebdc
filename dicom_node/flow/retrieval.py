"""Finding and fetching studies from a peer with ``query: true``, whichever way it speaks:
C-FIND and C-MOVE or C-GET (net/query_retrieve.py) for a DIMSE peer, QIDO-RS and WADO-RS
(dicomweb/) for a DICOMweb one. What is retrieved enters the node as received instances do,
durable, indexed and then routed, recorded under the peer's AE title as its source; a C-GET or
WADO-RS retrieval is audited as an association (DICOM Instances Transferred), as a C-MOVE's
instances are by the listener that takes them.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any

from pydicom.dataset import Dataset

from ..config import NodeConfig, Peer
from ..dicomweb.client import DicomwebPeerClient
from ..dicomweb.retrieve import wado_retrieve
from ..errors import PeerError
from ..net import query_retrieve
from ..net.query_retrieve import RetrieveReport
from ..net.tls import client_context
from ..storage.audit import AuditLog
from ..storage.index import Index
from ..storage.store import InstanceStore

log = logging.getLogger(__name__)

#: What a study-level query asks back (and the CLI shows).
STUDY_KEYS = ["StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber", "ModalitiesInStudy",
              "StudyDescription", "NumberOfStudyRelatedInstances"]
SERIES_KEYS = ["SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
               "NumberOfSeriesRelatedInstances"]


def query_peer(config: NodeConfig, name: str) -> Peer:
    """The configured peer ``name``, which must allow query/retrieve."""
    peer = config.peer(name)
    if not peer.query:
        raise PeerError(f"peer {name} does not have query: true (the node may not query or retrieve from it)")
    return peer


def _tls(config: NodeConfig) -> ssl.SSLContext | None:
    return client_context(config.node.tls) if config.node.tls is not None else None


def find(config: NodeConfig, peer: Peer, level: str, keys: dict[str, str], timeout: float = 30.0) -> list[Dataset]:
    """Matches at ``level`` (STUDY or SERIES; SERIES needs StudyInstanceUID), each with the
    attributes of STUDY_KEYS or SERIES_KEYS; C-FIND where the peer has a DIMSE address, QIDO-RS
    otherwise."""
    wanted = {k: "" for k in (STUDY_KEYS if level == "STUDY" else SERIES_KEYS + ["StudyInstanceUID"])}
    if peer.has_dimse:
        return query_retrieve.find(config.node.ae_title, peer, level, {**wanted, **keys}, timeout, _tls(config))
    client = DicomwebPeerClient(peer)
    try:
        if level == "STUDY":
            return client.search_studies(keys)
        study = keys.get("StudyInstanceUID", "")
        if not study:
            raise PeerError("a series query needs StudyInstanceUID")
        return client.search_series(study, {k: v for k, v in keys.items() if k != "StudyInstanceUID"})
    finally:
        client.close()


def study_for_accession(config: NodeConfig, peer: Peer, accession: str) -> str:
    """The one study with Accession Number ``accession`` on ``peer`` (PeerError: none, or several)."""
    found = sorted({str(ds.get("StudyInstanceUID", "")) for ds in find(config, peer, "STUDY", {"AccessionNumber": accession})})
    if len(found) != 1:
        raise PeerError(f"{peer.name} has {len(found) or 'no'} studies with accession number {accession!r}"
                        + (f": {', '.join(found)}" if found else ""))
    return found[0]


def retrieve(config: NodeConfig, peer: Peer, study_uid: str, store: InstanceStore, index: Index,
             audit: AuditLog | None = None, timeout: float = 600.0) -> RetrieveReport:
    """Fetch the study into the node: WADO-RS for a DICOMweb-only peer, else the peer's
    ``retrieve`` (C-MOVE to the node's AE title, whose listener must be running; or C-GET)."""
    how = "WADO-RS" if not peer.has_dimse else "C-GET" if peer.retrieve == "get" else "C-MOVE"
    log.info("Retrieving study %s from %s by %s", study_uid, peer.name, how)
    if how == "WADO-RS":
        report = wado_retrieve(peer, study_uid, store, index, config.node.ae_title)
    elif how == "C-GET":
        report = query_retrieve.get(config.node.ae_title, peer, study_uid, store, index, timeout, _tls(config))
    else:
        report = query_retrieve.move(config.node.ae_title, peer, study_uid, config.node.ae_title, timeout, _tls(config))
    log.info("Study %s from %s by %s: %d sub-operations completed, %d failed, %d stored here (%d already held) in %.1f s",
             study_uid, peer.name, how, report.completed, report.failed, report.stored, report.duplicates, report.seconds)
    if audit is not None and how != "C-MOVE":
        audit.write("association", **_audit_fields(index, peer, study_uid, how, report, config.node.ae_title))
    return report


def _audit_fields(index: Index, peer: Peer, study_uid: str, how: str, report: RetrieveReport, node_ae: str) -> dict[str, Any]:
    classes = {r["sop_class_uid"]: r["n"] for r in index.query(
        "SELECT sop_class_uid, count(*) AS n FROM instances WHERE study_uid = ? AND calling_ae = ? GROUP BY sop_class_uid",
        (study_uid, peer.ae_title))}
    patient = index.query("SELECT patient_id FROM studies WHERE study_uid = ?", (study_uid,))
    fields: dict[str, Any] = {
        "outcome": "released", "protocol": how, "peer": peer.name, "calling_ae": peer.ae_title, "called_ae": node_ae,
        "address": peer.host or (peer.dicomweb.url if peer.dicomweb else ""), "port": peer.port or 0,
        "instances_stored": report.stored - report.duplicates, "instances_duplicate": report.duplicates,
        "instances_failed": report.failed + len(report.refused), "duration_s": round(report.seconds, 3),
        "pid": os.getpid()}
    if report.refused:
        fields["failures"] = report.refused[:20]
    if classes:
        fields["studies"] = [{"study_uid": study_uid, "patient_id": patient[0]["patient_id"] if patient else "",
                              "sop_classes": classes}]
    return fields
