"""The node's audit records in DICOM's own vocabulary: PS3.15 A.5 audit messages.

Each record of the audit trail that a hospital's ATNA audit repository cares about carries a
``dicom`` member shaped like the DICOM Audit Message (the element names of PS3.15 A.5.1's
schema, as JSON): EventIdentification, ActiveParticipant, AuditSourceIdentification and
ParticipantObjectIdentification. Codes come from pydicom's DCM code dictionary, not typed here.

  listener_started / listener_stopped   Application Activity (110100): Application Start/Stop
  association with instances stored     DICOM Instances Transferred (110104), action C, per study
  association refused, TLS refused       Security Alert (110113): Node Authentication (110126)
  result_sent / forwarded                Export (110106), action R
  retention_removed                      DICOM Study Deleted (110105), action D

The patient participant carries the Patient ID only (what the message needs), never the name.
"""

from __future__ import annotations

from typing import Any

from pydicom.sr.codedict import codes

#: RFC 3881 / PS3.15 A.5 fixed values.
OUTCOME_SUCCESS, OUTCOME_MINOR_FAILURE, OUTCOME_SERIOUS_FAILURE = "0", "4", "8"
PERSON, SYSTEM_OBJECT = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_SECURITY_RESOURCE = "1", "3", "13"
ID_PATIENT_NUMBER = {"csd-code": "2", "codeSystemName": "RFC-3881", "originalText": "Patient Number"}
NETWORK_IP, NETWORK_NAME = "2", "1"
AUDIT_SOURCE_APPLICATION_SERVER = "4"


def _code(code: Any) -> dict[str, str]:
    return {"csd-code": code.value, "codeSystemName": code.scheme_designator, "originalText": code.meaning}


def _event(event_id: Any, action: str, when: str, outcome: str, types: list[Any] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    event: dict[str, Any] = {"EventID": _code(event_id), "EventActionCode": action, "EventDateTime": when,
                             "EventOutcomeIndicator": outcome}
    if types:
        event["EventTypeCode"] = [_code(t) for t in types]
    return event


def _participant(user_id: str, requestor: bool, address: str = "", role: Any = None) -> dict[str, Any]:
    participant: dict[str, Any] = {"UserID": user_id or "unknown", "UserIsRequestor": requestor}
    if address:
        participant["NetworkAccessPointID"] = address
        participant["NetworkAccessPointTypeCode"] = NETWORK_IP if address[:1].isdigit() or ":" in address else NETWORK_NAME
    if role is not None:
        participant["RoleIDCode"] = _code(role)
    return participant


def _study(uid: str, sop_classes: dict[str, int] | None = None) -> dict[str, Any]:
    study: dict[str, Any] = {"ParticipantObjectID": uid, "ParticipantObjectTypeCode": SYSTEM_OBJECT,
                             "ParticipantObjectTypeCodeRole": ROLE_REPORT,
                             "ParticipantObjectIDTypeCode": _code(codes.DCM.StudyInstanceUID)}
    if sop_classes:
        study["ParticipantObjectDescription"] = {"SOPClass": [{"UID": uid_, "NumberOfInstances": n}
                                                              for uid_, n in sorted(sop_classes.items())]}
    return study


def _patient(patient_id: str) -> dict[str, Any]:
    return {"ParticipantObjectID": patient_id, "ParticipantObjectTypeCode": PERSON,
            "ParticipantObjectTypeCodeRole": ROLE_PATIENT, "ParticipantObjectIDTypeCode": ID_PATIENT_NUMBER}


def dicom_message(event: str, fields: dict[str, Any], when: str, node_ae: str) -> dict[str, Any] | None:
    """The DICOM audit message for one of the node's audit records (None: not a DICOM event)."""
    source = {"AuditSourceID": node_ae, "AuditSourceTypeCode": AUDIT_SOURCE_APPLICATION_SERVER}
    node = _participant(node_ae, False, role=codes.DCM.Application)
    if event in ("listener_started", "listener_stopped"):
        kind = codes.DCM.ApplicationStart if event == "listener_started" else codes.DCM.ApplicationStop
        node["AlternativeUserID"] = str(fields.get("pid", ""))
        return {"EventIdentification": _event(codes.DCM.ApplicationActivity, "E", when, OUTCOME_SUCCESS, [kind]),
                "ActiveParticipant": [node], "AuditSourceIdentification": source}
    if event == "association" and fields.get("outcome") == "rejected":
        caller = _participant(str(fields.get("calling_ae") or fields.get("address", "")), True, str(fields.get("address", "")))
        return {"EventIdentification": _event(codes.DCM.SecurityAlert, "E", when, OUTCOME_MINOR_FAILURE,
                                              [codes.DCM.NodeAuthentication]),
                "ActiveParticipant": [caller, _participant(str(fields.get("called_ae") or node_ae), False)],
                "AuditSourceIdentification": source,
                "ParticipantObjectIdentification": [{
                    "ParticipantObjectID": f"{fields.get('address', '')}:{fields.get('port', '')}",
                    "ParticipantObjectTypeCode": SYSTEM_OBJECT, "ParticipantObjectTypeCodeRole": ROLE_SECURITY_RESOURCE,
                    "ParticipantObjectIDTypeCode": {"csd-code": "12", "codeSystemName": "RFC-3881", "originalText": "URI"},
                    "ParticipantObjectDetail": [{"type": "Alert Description", "value": str(fields.get("reason", ""))}]}]}
    if event == "security_alert":
        kind = {"audit_tampered": codes.DCM.ObjectSecurityAttributesChanged,
                "login_failed": codes.DCM.UseOfRestrictedFunction}.get(str(fields.get("alert")),
                                                                      codes.DCM.SecurityConfiguration)
        return {"EventIdentification": _event(codes.DCM.SecurityAlert, "E", when,
                                              OUTCOME_SERIOUS_FAILURE if fields.get("alert") == "audit_tampered"
                                              else OUTCOME_MINOR_FAILURE, [kind]),
                "ActiveParticipant": [node], "AuditSourceIdentification": source,
                "ParticipantObjectIdentification": [{
                    "ParticipantObjectID": str(fields.get("object", "")),
                    "ParticipantObjectTypeCode": SYSTEM_OBJECT, "ParticipantObjectTypeCodeRole": ROLE_SECURITY_RESOURCE,
                    "ParticipantObjectIDTypeCode": {"csd-code": "12", "codeSystemName": "RFC-3881", "originalText": "URI"},
                    "ParticipantObjectDetail": [{"type": "Alert Description", "value": str(fields.get("description", ""))}]}]}
    if event == "association" and fields.get("studies"):
        outcome = OUTCOME_SUCCESS if not fields.get("instances_failed") else OUTCOME_MINOR_FAILURE
        objects: list[dict[str, Any]] = []
        for study in fields["studies"]:
            objects.append(_study(study["study_uid"], study.get("sop_classes")))
            if study.get("patient_id"):
                objects.append(_patient(study["patient_id"]))
        return {"EventIdentification": _event(codes.DCM.DICOMInstancesTransferred, "C", when, outcome),
                "ActiveParticipant": [
                    _participant(str(fields.get("calling_ae", "")), True, str(fields.get("address", "")), codes.DCM.SourceRoleID),
                    _participant(str(fields.get("called_ae") or node_ae), False, role=codes.DCM.DestinationRoleID)],
                "AuditSourceIdentification": source, "ParticipantObjectIdentification": objects}
    if event in ("result_sent", "forwarded"):
        objects = [_study(str(fields["study_uid"]))] if fields.get("study_uid") else []
        return {"EventIdentification": _event(codes.DCM.Export, "R", when, OUTCOME_SUCCESS),
                "ActiveParticipant": [
                    _participant(node_ae, True, role=codes.DCM.SourceRoleID),
                    _participant(str(fields.get("ae_title", "")), False, str(fields.get("host", "")),
                                 codes.DCM.DestinationRoleID)],
                "AuditSourceIdentification": source, "ParticipantObjectIdentification": objects}
    if event == "retention_removed":
        return {"EventIdentification": _event(codes.DCM.DICOMStudyDeleted, "D", when, OUTCOME_SUCCESS),
                "ActiveParticipant": [node], "AuditSourceIdentification": source,
                "ParticipantObjectIdentification": [_study(str(fields.get("study_uid", "")))]}
    return None
