"""The RIS target: an HL7 v2.5 ORU^R01 per finished analysis (``job.done``, or an external AI's
results mapped back to the original study: ``results.returned``), built with hl7apy,
sent over MLLP (TLS when the target says so), and its ACK awaited.

The message (README, "Notifications", has a sample):

    MSH  sending/receiving application and facility, ORU^R01^ORU_R01, control ID derived from
         the job key (the same analysis sent again carries the same ID: a RIS recognises it)
    PID  the original patient (PID-3 ID, PID-5 name, PID-7 birth date, PID-8 sex), also when
         the analysis ran on a pseudonymised copy (context.event_context maps it back)
    OBR  OBR-3 the accession number, OBR-4 the procedure (modality and study description),
         OBR-7 the study's date and time, OBR-25 F
    OBX  per structure: volume (mL), mean (Hounsfield unit) and longest axial diameter (mm), NM
         with UCUM units; per classification: present/absent (ST) and its score (NM); the model;
         the SR's SOP Instance UID (ST), so the RIS can link the report

ACK: AA (or CA) delivered; AE, AR (CE, CR) dead with MSA-3 / ERR; none within the timeout, or a
connection that fails, retried.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from typing import Any

from hl7apy.core import Message
from hl7apy.parser import parse_message

from ..config import Hl7Target
from ..errors import NotificationError
from ..storage.header import header_at
from ..storage.index import Index

START, END = b"\x0b", b"\x1c\x0d"
CODING = "99DCMNODE"  # local coding system of the node's observation identifiers
#: UCUM units of the measurements.
UNITS = {"volume_ml": ("mL", "milliliter"), "mean_hu": ("[hnsf'U]", "Hounsfield unit"),
         "longest_axial_diameter_mm": ("mm", "millimeter")}
#: Lung densitometry (ai/lung_density.py): key, what it is, UCUM units.
LUNG_DENSITY = (("volume_ml", "volume", "mL^milliliter^UCUM"), ("mld_hu", "mean lung density", "[hnsf'U]^Hounsfield unit^UCUM"),
                ("laa950_percent", "LAA%-950", "%^percent^UCUM"), ("perc15_hu", "Perc15", "[hnsf'U]^Hounsfield unit^UCUM"))
LABELS = {"volume_ml": "volume", "mean_hu": "mean attenuation", "longest_axial_diameter_mm": "longest axial diameter"}


def _clean(text: Any, limit: int = 200) -> str:
    """A value safe inside an HL7 field: no delimiters, no line breaks."""
    value = str(text if text is not None else "")
    for ch in "|^~\\&\r\n":
        value = value.replace(ch, " ")
    return value.strip()[:limit]


def control_id(job_key: str) -> str:
    """MSH-10, at most 20 characters, the same for every sending of one analysis."""
    return "DN" + hashlib.sha256(job_key.encode()).hexdigest()[:18].upper()


def build_oru(target: Hl7Target, context: dict[str, Any], index: Index) -> Message:
    payload, study, series = context["payload"], context["study"], context["series"]
    header = None
    rows = index.query("SELECT path FROM instances WHERE study_uid = ? LIMIT 1", (study.get("study_uid", ""),))
    if rows:
        header = header_at(rows[0]["path"])
    message = Message("ORU_R01", version="2.5")
    msh = message.msh
    msh.msh_3 = _clean(target.sending_application, 180)
    msh.msh_4 = _clean(target.sending_facility, 180)
    msh.msh_5 = _clean(target.receiving_application, 180)
    msh.msh_6 = _clean(target.receiving_facility, 180)
    msh.msh_7 = time.strftime("%Y%m%d%H%M%S")
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id(str(payload.get("job_key") or context["event"]["id"]))
    msh.msh_11 = "P"
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3 = _clean(study.get("patient_id", ""), 20) + "^^^^PI"
    name = str(study.get("patient_name", "") or "")
    pid.pid_5 = "^".join(_clean(part, 50) for part in name.split("^")[:5]) if name else ""
    if header is not None:
        if header.get("PatientBirthDate"):
            pid.pid_7 = _clean(header.PatientBirthDate, 8)
        if str(header.get("PatientSex", "")) in ("M", "F", "O"):
            pid.pid_8 = str(header.PatientSex)
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1 = "1"
    obr.obr_3 = _clean(study.get("accession_number", ""), 22)
    modality = str(header.get("Modality", "")) if header is not None else str(series.get("modality", ""))
    obr.obr_4 = f"{_clean(modality, 20)}^{_clean(study.get('study_description', '') or 'Imaging study', 80)}"
    when = _clean(study.get("study_date", ""), 8) + (_clean(header.get("StudyTime", ""), 6).split(".")[0]
                                                      if header is not None else "")
    if when:
        obr.obr_7 = when
    obr.obr_22 = time.strftime("%Y%m%d%H%M%S")
    obr.obr_25 = "F"
    observations: list[tuple[str, str, str, str, str]] = []  # value type, identifier, value, units, status
    model = f"{payload.get('model', payload.get('pipeline', ''))} {payload.get('model_version', '')}".strip()
    if model:
        observations.append(("ST", f"MODEL^AI model^{CODING}", _clean(model), "", "F"))
    measured = {m.get("name") for m in payload.get("measurements", [])}
    for structure in payload.get("structures", []):  # found, whether or not measured (an external AI's SEG)
        if structure.get("name") and structure.get("name") not in measured:
            observations.append(("ST", f"{_clean(structure['name'], 60).upper().replace(' ', '_')}^{_clean(structure['name'], 80)}"
                                       f" segmented^{CODING}", "present", "", "F"))
    if payload.get("peer"):
        observations.append(("ST", f"SOURCE^Analysed by^{CODING}", _clean(f"external AI {payload['peer']}"), "", "F"))
    for m in payload.get("measurements", []):
        name_ = _clean(m.get("name", ""), 60)
        what = f"{name_} {m['lesion']}" if m.get("lesion") else name_
        code = f"{name_.upper().replace(' ', '_')}{'_L' + str(m['lesion']) if m.get('lesion') else ''}"
        for key, (unit, unit_name) in UNITS.items():
            if m.get(key) is not None:
                observations.append(("NM", f"{code}_{key.upper()}^{what} {LABELS[key]}^{CODING}", str(m[key]),
                                     f"{unit}^{unit_name}^UCUM", "F"))
    density = payload.get("lung_density") or {}
    for row in density.get("rows", []):
        region = _clean(row.get("region", ""), 40)
        for key, label, unit in LUNG_DENSITY:
            if row.get(key) is not None:
                observations.append(("NM", f"{region.upper().replace(' ', '_')}_{key.upper()}^{region} {label}^{CODING}",
                                     str(row[key]), unit, "F"))
    for why in density.get("withheld", []):
        observations.append(("ST", f"LUNG_DENSITY_WITHHELD^Lung densitometry withheld^{CODING}", _clean(why), "", "F"))
    for finding, present in sorted(payload.get("findings", {}).items()):
        observations.append(("ST", f"{_clean(finding, 60).upper().replace(' ', '_')}^{_clean(finding, 80)}^{CODING}",
                             "present" if present else "absent", "", "F"))
        score = payload.get("scores", {}).get(finding)
        if score is not None:
            observations.append(("NM", f"{_clean(finding, 60).upper().replace(' ', '_')}_SCORE^{_clean(finding, 60)} "
                                       f"score^{CODING}", str(score), "", "F"))
    if payload.get("sr_sop_instance_uid"):
        observations.append(("ST", f"SR_UID^Structured report SOP Instance UID^{CODING}",
                             _clean(payload["sr_sop_instance_uid"], 64), "", "F"))
    for number, (kind, identifier, value, units, status) in enumerate(observations, start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(number)
        obx.obx_2 = kind
        obx.obx_3 = identifier
        obx.obx_5 = value
        if units:
            obx.obx_6 = units
        obx.obx_11 = status
    return message


def _exchange(target: Hl7Target, data: bytes) -> bytes:
    """Send one MLLP frame and read the answer's frame."""
    deadline = time.monotonic() + target.timeout_seconds
    raw = socket.create_connection((target.host, target.port), timeout=target.timeout_seconds)
    try:
        if target.tls:
            tls = ssl.create_default_context(cafile=str(target.ca_certificates) if target.ca_certificates else None)
            sock: socket.socket = tls.wrap_socket(raw, server_hostname=target.server_hostname or target.host)
        else:
            sock = raw
    except BaseException:
        raw.close()
        raise
    with sock:
        sock.sendall(START + data + END)
        answer = b""
        while END not in answer:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                raise NotificationError(f"RIS {target.host}:{target.port} closed the connection without an ACK")
            answer += chunk
            if len(answer) > 2**20:
                raise NotificationError(f"RIS {target.host}:{target.port} answered more than 1 MiB, no ACK frame")
    return answer[answer.find(START) + 1:answer.find(END)]


def send_oru(target: Hl7Target, context: dict[str, Any], index: Index) -> str:
    """Send the ORU^R01 of a finished analysis and return its control ID once acknowledged."""
    message = build_oru(target, context, index)
    ours = str(message.msh.msh_10.value)
    try:
        raw = _exchange(target, message.to_er7().encode("utf-8"))
    except (OSError, ssl.SSLError) as exc:  # TimeoutError included
        raise NotificationError(f"RIS {target.host}:{target.port}: no ACK ({exc})") from None
    try:
        ack = parse_message(raw.decode("utf-8", "replace").replace("\n", "\r"), find_groups=False)
        code = str(ack.msa.msa_1.value)
        about = str(ack.msa.msa_2.value)
        text = str(ack.msa.msa_3.value) if ack.msa.msa_3.value else ""
    except Exception as exc:  # noqa: BLE001 - whatever the RIS sent, it was not an ACK we can read
        raise NotificationError(f"RIS {target.host}:{target.port} answered something that is not an ACK: {exc}") from None
    if about != ours:
        raise NotificationError(f"RIS {target.host}:{target.port} acknowledged {about!r}, not {ours!r}")
    if code in ("AA", "CA"):
        return ours
    if not text:
        try:
            text = str(ack.err.err_8.value or ack.err.to_er7())
        except Exception:  # noqa: BLE001 - no ERR segment
            text = ""
    raise NotificationError(f"RIS {target.host}:{target.port} answered {code} to {ours}: {text}".strip(),
                            permanent=code in ("AE", "AR", "CE", "CR"))
