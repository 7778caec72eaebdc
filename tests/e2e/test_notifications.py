"""Notifications end to end: Orthanc sends a study, the node analyses it, the SEG and SR reach
Orthanc, and the RIS gets an ORU^R01 and the team a signed webhook; and for a study analysed
de-identified by an external AI, the ORU^R01 names the original patient."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from hl7apy.parser import parse_message

from dicom_node.config import parse_config
from dicom_node.service.node import Node
from dicom_node.tools.synthetic import write_ct_series

from ..conftest import config_dict
from ..privacy.test_reidentify import PROFILE, key_file
from ..support.external_ai import ExternalAI, add_identity
from ..support.peers import free_port, start_orthanc, wait_for
from ..support.receivers import ris_server, webhook_server

pytestmark = pytest.mark.slow
KEY = b"e2e-webhook-key-0123456789abcdef"


def _pid(er7: str) -> list[str]:
    message = parse_message(er7.replace("\n", "\r"), find_groups=False)
    pid = next(s for s in message.children if s.name == "PID")
    return [str(pid.pid_3.value).split("^")[0], str(pid.pid_5.value)]


def test_orthanc_to_node_to_orthanc_with_an_oru_at_the_ris_and_a_webhook(tmp_path: Path) -> None:
    (tmp_path / "hook.key").write_bytes(KEY)
    orthanc_port = free_port()
    with ris_server("AA") as ris, webhook_server(KEY) as hook:
        sections = {
            "peers": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port}],
            "routes": [{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline", "destinations": ["sender"]}],
            "pipelines": {"baseline": {"kind": "classical"}},
            "results": {"path": str(tmp_path / "results")},
            "jobs": {"workers": 1, "lease_seconds": 30, "poll_seconds": 0.2},
            "delivery": {"retry_base_seconds": 0.5, "retry_max_seconds": 2, "interval_seconds": 0.2},
            "completion": {"series_stable_seconds": 1, "study_stable_seconds": 2, "sweep_interval_seconds": 0.2},
            "notifications": {"interval_seconds": 0.2, "targets": {
                "ris": {"kind": "hl7", "host": "127.0.0.1", "port": ris.port},
                "team": {"kind": "webhook", "url": hook.url, "secret_file": str(tmp_path / "hook.key")}},
                "subscriptions": [{"on": ["job.done"], "to": ["ris"]},
                                  {"on": ["job.done", "study.complete"], "to": ["team"]}]},
        }
        node = Node(parse_config(config_dict(tmp_path, **sections), "e2e"))
        node.start()
        orthanc = start_orthanc(tmp_path / "orthanc", port=orthanc_port,
                                modalities={"ainode": ["AI_NODE", "127.0.0.1", node.port]})
        try:
            files = write_ct_series(tmp_path / "ct", 12, seed=41, patient_id="MRN-0815")
            for path in files:
                add_identity(path)
                orthanc.upload(path)
            original = pydicom.dcmread(files[0], stop_before_pixels=True)
            study = str(original.StudyInstanceUID)
            orthanc.call("POST", "/modalities/ainode/store", {"Resources": [orthanc.study_id(study)], "Synchronous": True})
            wait_for(lambda: {s["MainDicomTags"].get("Modality") for s in orthanc.series_of_study(study)} >= {"SEG", "SR"},
                     120, "the SEG and SR in Orthanc")
            wait_for(lambda: ris.received, 60, "the ORU^R01 at the RIS")
            assert _pid(ris.received[0]) == ["MRN-0815", str(original.PatientName)]
            assert f"|{original.AccessionNumber}|" in ris.received[0]
            wait_for(lambda: {h["body"]["type"] for h in hook.received} >= {"job.done", "study.complete"}, 60,
                     "the webhooks")
            done = next(h["body"] for h in hook.received if h["body"]["type"] == "job.done")
            assert done["study"]["study_uid"] == study and done["data"]["measurements"]
            assert hook.bad_signatures == 0
            states = {r["state"] for r in node.index.query("SELECT state FROM notifications")}
            assert states == {"delivered"}
        finally:
            node.stop()
            orthanc.stop()


def test_an_external_ais_results_reach_the_ris_under_the_original_patient(tmp_path: Path) -> None:
    external = ExternalAI()
    orthanc_port = free_port()
    with ris_server("AA") as ris:
        sections = {
            "peers": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port},
                      {"name": "extai", "ae_title": "EXTAI", "host": "127.0.0.1", "port": external.port}],
            "routes": [{"name": "external-ai", "match": {"modality": "CT"},
                        "forward": [{"peer": "extai", "deidentify": "research"}], "destinations": ["sender"]}],
            "deidentification": {"key_file": str(key_file(tmp_path)), "profiles": {"research": PROFILE}},
            "results": {"path": str(tmp_path / "results")},
            "delivery": {"retry_base_seconds": 0.5, "retry_max_seconds": 2, "interval_seconds": 0.2},
            "completion": {"series_stable_seconds": 2, "study_stable_seconds": 3, "sweep_interval_seconds": 0.2},
            "notifications": {"interval_seconds": 0.2,
                              "targets": {"ris": {"kind": "hl7", "host": "127.0.0.1", "port": ris.port}},
                              "subscriptions": [{"on": ["results.returned"], "to": ["ris"]}]},
        }
        node = Node(parse_config(config_dict(tmp_path, **sections), "e2e"))
        node.start()
        orthanc = start_orthanc(tmp_path / "orthanc", port=orthanc_port,
                                modalities={"ainode": ["AI_NODE", "127.0.0.1", node.port]})
        try:
            files = write_ct_series(tmp_path / "ct", 8, 48, 48, seed=31, patient_id="MRN-4711")
            for path in files:
                add_identity(path)
                orthanc.upload(path)
            original = pydicom.dcmread(files[0], stop_before_pixels=True)
            study = str(original.StudyInstanceUID)
            orthanc.call("POST", "/modalities/ainode/store", {"Resources": [orthanc.study_id(study)], "Synchronous": True})
            wait_for(lambda: len(external.received) == len(files), 60, "the de-identified study at the external AI")
            assert external.received[0].PatientID != "MRN-4711"
            external.segment_and_send_back(node.port)
            wait_for(lambda: ris.received, 60, "the ORU^R01 at the RIS")
            assert _pid(ris.received[0]) == ["MRN-4711", str(original.PatientName)]  # the original, not the pseudonym
            assert f"|{original.AccessionNumber}|" in ris.received[0] and "BODY^Body segmented" in ris.received[0]
            seg = wait_for(lambda: [s for s in orthanc.series_of_study(study) if s["MainDicomTags"].get("Modality") == "SEG"],
                           60, "the mapped-back SEG")
            assert pydicom.dcmread(io.BytesIO(orthanc.instance_file(seg[0]["Instances"][0]))).PatientID == "MRN-4711"
        finally:
            node.stop()
            orthanc.stop()
            external.stop()
