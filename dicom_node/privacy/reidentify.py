"""Results coming back for a de-identified study: mapped to the original patient and study.

An external AI service that received a study de-identified (routing: a forward peer with
``deidentify:``) sends its results (SEG, SR, secondary captures) back to the node. They reference
the pseudonymous UIDs and carry the pseudonymous patient. A series is such a return when its
Study Instance UID is a pseudonym the node handed out (pseudonym_map) *and* it came from the peer
that study was sent to: a pseudonym alone, from anyone else, maps nothing back.

Re-identification then, in the dataset and every nested item: each UID that is a pseudonym the
node handed out becomes the original again (study, series, instances, frame of reference: so a
SEG references the original CT); UIDs the external side made (its own SOP Instance and Series
UIDs) stay as they are. The Patient and General Study attributes are copied from an original
instance of the study (an attribute the original lacks is removed, never left pseudonymous),
and the de-identification declarations are removed (the object identifies the patient again).
"""

from __future__ import annotations

import copy
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ..config import Peer
from . import pseudonym_map

log = logging.getLogger(__name__)

#: Attributes taken from the original study (Patient, Patient Study and General Study modules).
PATIENT_AND_STUDY = ("PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
                     "OtherPatientIDsSequence", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
                     "PatientSize", "PatientWeight", "EthnicGroup", "PatientComments", "StudyDate", "StudyTime",
                     "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyID", "ReferringPhysicianName",
                     "StudyDescription", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
                     "AdmittingDiagnosesDescription", "InstitutionName")
#: What the de-identified copy declared, which no longer holds.
DECLARATIONS = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                "LongitudinalTemporalInformationModified")


@dataclass(frozen=True)
class Return:
    """A series that answers a de-identified forward: where that study went and came from."""

    route: str
    peer: str
    profile: str
    original_study_uid: str


def returning(db: sqlite3.Connection, study_uid: str, calling_ae: str, peers: Sequence[Peer]) -> Return | None:
    """The Return for a series of ``study_uid`` sent by ``calling_ae``, None when it is not one."""
    sent = [r for r in pseudonym_map.lookup(db, study_uid) if r["kind"] == "uid" and r["original"] == r["study_uid"]]
    for row in sent:
        peer = next((p for p in peers if p.name == row["peer"]), None)
        if peer is not None and peer.ae_title == calling_ae:
            return Return(row["route"], row["peer"], row["profile"], row["original"])
    if sent:
        log.warning("A series of study %s (a pseudonym the node gave study %s for %s) came from %s, not from a peer it "
                    "went to: not mapped back, routed as any other series", study_uid, sent[0]["original"],
                    ", ".join(r["peer"] for r in sent), calling_ae)
    return None


def reidentify(ds: Dataset, db: sqlite3.Connection, original: Dataset) -> int:
    """Map ``ds`` back in place (module docstring); return how many UID values were mapped."""
    values: list[str] = []
    _collect_uids(ds, values)
    mapping = pseudonym_map.originals(db, values)
    mapped = _map_uids(ds, mapping)
    for keyword in PATIENT_AND_STUDY:
        if keyword in original:
            ds[keyword] = copy.deepcopy(original[keyword])  # the caller's header (a cache) stays its own
        elif keyword in ds:
            delattr(ds, keyword)
    for keyword in DECLARATIONS:
        if keyword in ds:
            delattr(ds, keyword)
    if getattr(ds, "file_meta", None) is not None and "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return mapped


def _collect_uids(ds: Dataset, into: list[str]) -> None:
    for element in ds:
        if element.VR == "UI" and element.value:
            into.extend(str(v) for v in (element.value if isinstance(element.value, MultiValue) else [element.value]))
        elif element.VR == "SQ":
            for item in element.value or []:
                _collect_uids(item, into)


def _map_uids(ds: Dataset, mapping: dict[str, str]) -> int:
    mapped = 0
    for element in ds:
        if element.VR == "UI" and element.value:
            values = element.value if isinstance(element.value, MultiValue) else [element.value]
            new = [mapping.get(str(v).strip(), str(v)) for v in values]
            changed = sum(1 for a, b in zip(values, new) if str(a) != b)
            if changed:
                element.value = new if len(new) > 1 else new[0]
                mapped += changed
        elif element.VR == "SQ":
            for item in element.value or []:
                mapped += _map_uids(item, mapping)
    return mapped
