"""What a notification knows of its event: the event and its payload, the study and series it
concerns as the index holds them, the node. The patient's name is left out unless the
subscription says ``include_patient_name`` (the HL7 target always has it: the RIS files results
by patient). A study the node knows only under a pseudonym (results of a de-identified analysis)
is shown with the original patient and study (privacy/pseudonym_map.py)."""

from __future__ import annotations

import json
from typing import Any

from ..storage.index import Index


def event_context(index: Index, event: Any, node_ae: str, include_patient_name: bool) -> dict[str, Any]:
    """The template and message context of one event row."""
    payload = json.loads(event["payload"] or "{}")
    study_uid = str(event["study_uid"] or "")
    study: dict[str, Any] = {"study_uid": study_uid}
    if study_uid:
        original = index.query("SELECT original FROM pseudonyms WHERE pseudonym = ? AND kind = 'uid' LIMIT 1", (study_uid,))
        if original:
            study["study_uid"] = original[0]["original"]
        rows = index.query("SELECT patient_id, patient_name, study_date, study_description, accession_number "
                           "FROM studies WHERE study_uid = ?", (study["study_uid"],))
        if rows:
            study.update(dict(rows[0]))
        if not include_patient_name:
            study.pop("patient_name", None)
    series: dict[str, Any] = {"series_uid": str(event["series_uid"] or "")}
    if series["series_uid"]:
        rows = index.query("SELECT modality, series_description, body_part_examined, series_number, calling_ae "
                           "FROM series WHERE series_uid = ?", (series["series_uid"],))
        if rows:
            series.update(dict(rows[0]))
    return {"node": node_ae, "event": {"id": int(event["id"]), "type": event["type"], "created_at": event["created_at"],
                                       "job_id": event["job_id"]},
            "payload": payload, "study": study, "series": series}


def default_body(context: dict[str, Any]) -> dict[str, Any]:
    """The webhook's documented default JSON body."""
    return {"node": context["node"], "id": context["event"]["id"], "type": context["event"]["type"],
            "time": context["event"]["created_at"], "study": context["study"], "series": context["series"],
            "data": context["payload"]}
