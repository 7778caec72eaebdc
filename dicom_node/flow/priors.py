"""A route's priors (``routes[].priors``): the patient's most recent earlier studies like this one,
found on the route's source peer and brought into the node before the job runs, so a
``command`` pipeline can compare (pipelines/command.py hands each over in a folder of its own).

Found by a study-level query for the patient (QIDO-RS or C-FIND) with the series' modality in
ModalitiesInStudy (``match: modality``), then, for ``body_part``, a series-level query for one
series of that body part; newest first by StudyDate and StudyTime, this study left out. A prior
the node does not hold yet is retrieved like any study (retrieval.py) and marked ``prior`` in
``requests``, so the rules never route it as a new study (requests.held_studies). A source that
refuses or is down fails the job, which is retried like any failed job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ..config import NodeConfig, Peer, PriorsSpec
from ..errors import PeerError
from ..storage.audit import AuditLog
from ..storage.index import Index
from ..storage.store import InstanceStore
from .requests import RequestStore
from .retrieval import find, retrieve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prior:
    """One prior study, held by the node: its UID, date and its instances' files."""

    study_uid: str
    study_date: str
    files: tuple[Path, ...]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value or "")


def priors_source(config: NodeConfig, spec: PriorsSpec, calling_ae: str) -> Peer:
    """The peer priors come from: ``priors.source``, else the sender when it may be queried."""
    if spec.source is not None:
        return config.peer(spec.source)
    sender = next((p for p in config.peers if p.ae_title == calling_ae and p.query), None)
    if sender is None:
        raise PeerError(f"priors: no priors.source, and the sender {calling_ae!r} is not a peer with query: true")
    return sender


def find_priors(config: NodeConfig, peer: Peer, spec: PriorsSpec, header: Dataset) -> list[Dataset]:
    """The ``spec.count`` newest studies of the patient on ``peer`` matching ``spec``, this one left out."""
    patient = str(header.get("PatientID", "") or "")
    if not patient:
        return []
    modality = str(header.get("Modality", "") or "")
    keys = {"PatientID": patient, "StudyTime": ""}
    if spec.match in ("modality", "both") and modality:
        keys["ModalitiesInStudy"] = modality
    this = str(header.StudyInstanceUID)
    studies = [s for s in find(config, peer, "STUDY", keys) if str(s.get("StudyInstanceUID", "")) != this]
    if spec.match in ("modality", "both") and modality:  # an archive may ignore the key: check what it says
        studies = [s for s in studies if not _text(s, "ModalitiesInStudy") or modality in _text(s, "ModalitiesInStudy").split("\\")]
    studies.sort(key=lambda s: (_text(s, "StudyDate"), _text(s, "StudyTime")), reverse=True)
    body_part = str(header.get("BodyPartExamined", "") or "").upper()
    chosen: list[Dataset] = []
    for study in studies:
        if len(chosen) == spec.count:
            break
        if spec.match in ("body_part", "both") and body_part:
            series = find(config, peer, "SERIES", {"StudyInstanceUID": str(study.StudyInstanceUID)})
            if not any(_text(s, "BodyPartExamined").upper() == body_part for s in series):
                continue
        chosen.append(study)
    return chosen


def fetch_priors(config: NodeConfig, index: Index, store: InstanceStore, spec: PriorsSpec, header: Dataset,
                 calling_ae: str, audit: AuditLog | None = None) -> list[Prior]:
    """The priors of the series whose first header is ``header``, held by the node (retrieved
    first where it does not hold them yet); PeerError when the source cannot be asked."""
    peer = priors_source(config, spec, calling_ae)
    priors = []
    for study in find_priors(config, peer, spec, header):
        uid = str(study.StudyInstanceUID)
        held = index.query("SELECT path FROM instances WHERE study_uid = ? ORDER BY series_uid, instance_number, path",
                           (uid,))
        if not held:
            with index.transaction() as db:  # before its instances arrive: the rules must not route it
                RequestStore.insert(db, study_uid=uid, accession="", source=peer.name, route="", pipeline="",
                                    destinations=[], origin="prior", now=time.time())
                db.execute("UPDATE requests SET state = 'done', detail = ? WHERE study_uid = ? AND origin = 'prior'",
                           (f"prior of study {header.StudyInstanceUID}", uid))
            report = retrieve(config, peer, uid, store, index, audit)
            log.info("Prior %s (%s) of study %s: %d instance(s) retrieved from %s", uid, _text(study, "StudyDate"),
                     header.StudyInstanceUID, report.stored, peer.name)
            held = index.query("SELECT path FROM instances WHERE study_uid = ? ORDER BY series_uid, instance_number, path",
                               (uid,))
        priors.append(Prior(uid, _text(study, "StudyDate"), tuple(Path(r["path"]) for r in held)))
    return priors
