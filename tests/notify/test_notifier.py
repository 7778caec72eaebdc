"""Notifications (dicom_node/notify/) to real receivers: a signed webhook over HTTPS, e-mail
through an SMTP server that requires STARTTLS and a sign-in, and an ORU^R01 to a RIS (MLLP) that
answers AA, AE or nothing; fan-out by event type and condition; retries and dead letters; and a
notifier that stops between the event and its delivery delivers it once, not twice."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hl7apy.parser import parse_message

from dicom_node.config import NodeConfig
from dicom_node.notify.hl7_oru import control_id
from dicom_node.notify.notifier import Notifier, fan_out, retry_notification
from dicom_node.storage.events import emit
from dicom_node.storage.header import read_header
from dicom_node.storage.index import Index, Outcome, Receipt
from dicom_node.tools.synthetic import write_ct_series
from tests.support.certs import Authority
from tests.support.receivers import ris_server, smtp_server, webhook_server

KEY = b"0f3c6a1e9b7d4c2a8e5f1b3d7a9c0e2f-webhook"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _index_with_study(config: NodeConfig, tmp_path: Path) -> tuple[Index, str, str]:
    """An index holding one CT series (patient SYNTH001, accession ACC77, name DOE^JANE)."""
    index = Index(config.index.location)
    files = write_ct_series(tmp_path / "ct", 2, rows=16, columns=16)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.AccessionNumber, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "ACC77", "DOE^JANE", "19600101", "F"
        ds.StudyDescription = "CT CHEST"
        ds.save_as(path)
        index.record_instance(read_header(path), path, path.stat().st_size,
                              Receipt("PACS", "AI_NODE", "127.0.0.1", 1.0), Outcome.NEW)
    ds = pydicom.dcmread(files[0])
    return index, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


DONE = {"job": 7, "route": "ct", "pipeline": "ct-organs", "job_key": "ct:1.2.3:v1", "model": "ct-organs",
        "model_version": "1.2.0", "structures": [{"value": 1, "name": "liver"}],
        "measurements": [{"name": "liver", "label": 1, "lesion": None, "volume_ml": 1520.3, "mean_hu": 55.2,
                          "longest_axial_diameter_mm": 182.4},
                         {"name": "liver lesion", "label": 2, "lesion": 1, "volume_ml": 3.1, "mean_hu": 20.0,
                          "longest_axial_diameter_mm": 21.5}],
        "findings": {"liver lesion present": True}, "scores": {"liver lesion present": 0.91},
        "lung_density": {"rows": [{"region": "left lung", "side": "left", "volume_ml": 2510.4, "mld_hu": -861.2,
                                   "laa950_percent": None, "perc15_hu": None, "voxel_count": 1}],
                         "slice_thickness_mm": 3.0, "withheld": ["LAA%-950 and Perc15: slices 3 mm thick"]},
        "sr_sop_instance_uid": "1.2.826.0.1.3680043.8.498.555"}


def _emit(index: Index, kind: str, study: str, series: str, payload: dict[str, Any], now: float) -> None:
    with index.transaction() as db:
        emit(db, kind, study_uid=study, series_uid=series, job_id=payload.get("job"), payload=payload, now=now)


def _states(index: Index) -> list[tuple[str, str, str]]:
    return [(r["target"], r["state"], r["last_error"]) for r in index.query("SELECT * FROM notifications ORDER BY id")]


def test_a_signed_webhook_over_https_and_its_retries(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    ca = Authority("hospital", tmp_path / "ca")
    (tmp_path / "hook.key").write_bytes(KEY + b"\n")
    with webhook_server(KEY, ca.issue("hooks", ips=["127.0.0.1"])) as hook:
        config = make_config(notifications={
            "targets": {"chat": {"kind": "webhook", "url": hook.url, "secret_file": str(tmp_path / "hook.key"),
                                 "ca_certificates": str(ca.pem)}},
            "subscriptions": [{"on": ["job.done", "job.dead"], "to": ["chat"]},
                              {"on": ["job.done"], "when": {"attribute": "Modality", "equals": "MR"}, "to": ["chat"]}]})
        index, study, series = _index_with_study(config, tmp_path)
        clock = Clock()
        notifier = Notifier(config, index, clock=clock)
        _emit(index, "job.done", study, series, DONE, clock.now)
        _emit(index, "study.complete", study, "", {"version": 1}, clock.now)  # nobody subscribed
        assert notifier.run_once() == 1  # the MR-only subscription's condition does not hold for this CT
        [got] = hook.received
        assert got["headers"]["X-Dicom-Node-Event"] == "job.done"
        body = got["body"]
        assert (body["type"], body["study"]["accession_number"], body["data"]["measurements"][0]["volume_ml"]) == \
            ("job.done", "ACC77", 1520.3)
        assert "patient_name" not in body["study"] and body["study"]["patient_id"] == "SYNTH001"
        assert hook.bad_signatures == 0
        # The receiver fails: retried with backoff, then delivered; a 4xx is dead at once.
        hook.status = 503
        _emit(index, "job.dead", study, series, {"job": 8, "error": "boom"}, clock.now)
        assert notifier.run_once() == 0
        assert _states(index)[-1][:2] == ("chat", "pending") and "HTTP 503" in _states(index)[-1][2]
        hook.status = 200
        assert notifier.run_once() == 0  # not due yet
        clock.now += 6
        assert notifier.run_once() == 1
        hook.status = 400
        _emit(index, "job.dead", study, series, {"job": 9, "error": "boom"}, clock.now)
        notifier.run_once()
        assert _states(index)[-1][:2] == ("chat", "dead")
        dead = index.query("SELECT id FROM notifications WHERE state = 'dead'")[0]["id"]
        hook.status = 200
        assert retry_notification(index, dead, clock.now) and notifier.run_once() == 1
        index.close()


def test_email_needs_starttls_and_a_sign_in(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    ca = Authority("hospital", tmp_path / "ca")
    (tmp_path / "smtp.pass").write_text("mail-Pa55\n")
    with smtp_server(ca.issue("mail", ips=["127.0.0.1"]), "ai-node", "mail-Pa55") as box:
        target = {"kind": "email", "host": "127.0.0.1", "port": box.port, "user": "ai-node",
                  "password_file": str(tmp_path / "smtp.pass"), "sender": "ai-node@hospital.example",
                  "recipients": ["pacs-admin@hospital.example"], "ca_certificates": str(ca.pem)}
        config = make_config(notifications={"targets": {"admins": target},
                                            "subscriptions": [{"on": ["delivery.dead"], "to": ["admins"]},
                                                              {"on": ["job.done"], "to": ["admins"],
                                                               "include_patient_name": True}]})
        index, study, series = _index_with_study(config, tmp_path)
        notifier = Notifier(config, index)
        _emit(index, "delivery.dead", study, series, {"delivery": 3, "peer": "pacs", "error": "refused"}, 1.0)
        assert notifier.run_once() == 1
        [mail] = box.messages
        assert mail["Subject"] == "[AI_NODE] delivery.dead ACC77" and box.logins == ["ai-node"]
        text = mail.get_content()
        assert "Accession: ACC77" in text and "peer: pacs" in text and "DOE" not in text  # no name unless asked
        _emit(index, "job.done", study, series, DONE, 2.0)
        assert notifier.run_once() == 1
        assert "DOE^JANE" in box.messages[1].get_content()
        # A wrong password: the server refuses the sign-in, which sending again will not change.
        (tmp_path / "smtp.pass").write_text("wrong")
        _emit(index, "delivery.dead", study, series, {"delivery": 4}, 3.0)
        notifier.run_once()
        assert _states(index)[-1][1] == "dead" and "sign-in refused" in _states(index)[-1][2]
        # Without STARTTLS (a misconfigured target) the server will not take it: no message goes in clear.
        index.close()


@pytest.mark.parametrize("mode", ["AA", "AE", "silent"])
def test_an_oru_to_the_ris_and_what_its_ack_does(make_config: Callable[..., NodeConfig], tmp_path: Path, mode: str) -> None:
    with ris_server(mode) as ris:
        config = make_config(notifications={
            "targets": {"ris": {"kind": "hl7", "host": "127.0.0.1", "port": ris.port, "timeout_seconds": 3,
                                "sending_facility": "RADIOLOGY", "receiving_facility": "HOSPITAL"}},
            "subscriptions": [{"on": ["job.done"], "to": ["ris"]}]})
        index, study, series = _index_with_study(config, tmp_path)
        clock = Clock()
        notifier = Notifier(config, index, clock=clock)
        _emit(index, "job.done", study, series, DONE, clock.now)
        delivered = notifier.run_once()
        [er7] = ris.received
        message = parse_message(er7.replace("\n", "\r"), find_groups=False)
        assert str(message.msh.msh_9.value) == "ORU^R01^ORU_R01"
        assert str(message.msh.msh_10.value) == control_id("ct:1.2.3:v1")  # the same for every sending of the job
        segments = {s.name: s for s in message.children}
        assert str(segments["PID"].pid_3.value).startswith("SYNTH001") and "DOE^JANE" in er7
        assert str(segments["PID"].pid_7.value) == "19600101" and str(segments["PID"].pid_8.value) == "F"
        assert str(segments["OBR"].obr_3.value) == "ACC77" and "CT CHEST" in str(segments["OBR"].obr_4.value)
        obx = [s for s in er7.split("\r") if s.startswith("OBX")]
        assert any("LIVER_VOLUME_ML" in s and "|1520.3|mL^milliliter^UCUM|" in s for s in obx)
        assert any("LIVER_LESION_L1_LONGEST_AXIAL_DIAMETER_MM" in s and "|21.5|mm^" in s for s in obx)
        assert any("LEFT_LUNG_MLD_HU^left lung mean lung density" in s and "|-861.2|[hnsf'U]^" in s for s in obx)
        assert not any("LEFT_LUNG_LAA950" in s for s in obx)
        assert any("LUNG_DENSITY_WITHHELD" in s and "slices 3 mm thick" in s for s in obx)
        assert any("|present|" in s for s in obx) and any("1.2.826.0.1.3680043.8.498.555" in s for s in obx)
        state, error = _states(index)[0][1:]
        if mode == "AA":
            assert delivered == 1 and state == "delivered"
        elif mode == "AE":
            assert state == "dead" and "answered AE" in error and "Unknown patient" in error
        else:
            assert state == "pending" and ("no ACK" in error or "without an ACK" in error)
            clock.now += 6
            ris.mode = "AA"
            assert notifier.run_once() == 1 and len(ris.received) == 2
            assert ris.received[0] == ris.received[1] or control_id("ct:1.2.3:v1") in ris.received[1]
        index.close()


def test_an_oru_over_tls_and_a_ris_that_is_not_who_it_says(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    ca = Authority("hospital", tmp_path / "ca")
    stranger = Authority("stranger", tmp_path / "stranger")
    index: Index | None = None
    try:
        for issuer, expected in ((ca, "delivered"), (stranger, "pending")):
            with ris_server("AA", issuer.issue(f"ris-{issuer.name}", ips=["127.0.0.1"])) as ris:
                config = make_config(notifications={
                    "targets": {"ris": {"kind": "hl7", "host": "127.0.0.1", "port": ris.port, "tls": True,
                                        "ca_certificates": str(ca.pem), "timeout_seconds": 3}},
                    "subscriptions": [{"on": ["job.done"], "to": ["ris"]}]})
                if index is None:
                    index, study, series = _index_with_study(config, tmp_path)
                _emit(index, "job.done", study, series, DONE, 1.0)
                Notifier(config, index).run_once()
                state, error = _states(index)[-1][1:]  # the newest notification
                assert state == expected, error
                if expected == "pending":  # its certificate is not from the hospital's CA: nothing was sent
                    assert ris.received == [] and "CERTIFICATE_VERIFY_FAILED" in error
                else:
                    assert len(ris.received) == 1
    finally:
        if index is not None:
            index.close()


def test_stopping_between_event_and_delivery_delivers_once(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    (tmp_path / "hook.key").write_bytes(KEY)
    with webhook_server(KEY) as hook:
        config = make_config(notifications={
            "targets": {"chat": {"kind": "webhook", "url": hook.url, "secret_file": str(tmp_path / "hook.key")}},
            "subscriptions": [{"on": ["job.done"], "to": ["chat"]}]})
        index, study, series = _index_with_study(config, tmp_path)
        _emit(index, "job.done", study, series, DONE, 1.0)
        assert fan_out(index, config, 1.0) == 1  # the first notifier fanned out, then stopped before sending
        assert fan_out(index, config, 1.0) == 0  # a second fan-out makes nothing twice
        second = Notifier(config, Index(config.index.location))  # a new process, the same index
        assert second.run_once() == 1 and second.run_once() == 0
        assert len(hook.received) == 1
        assert json.loads(json.dumps(hook.received[0]["body"]))["data"]["job"] == 7
        second.index.close()
        index.close()


def test_an_hl7_target_takes_job_done_only(make_config: Callable[..., NodeConfig]) -> None:
    from dicom_node.errors import ConfigError

    with pytest.raises(ConfigError, match="HL7 target: it reports finished analyses"):
        make_config(notifications={"targets": {"ris": {"kind": "hl7", "host": "127.0.0.1", "port": 2575}},
                                   "subscriptions": [{"on": ["job.dead"], "to": ["ris"]}]})
    with pytest.raises(ConfigError, match="unknown event type"):
        make_config(notifications={"targets": {}, "subscriptions": [{"on": ["job.exploded"], "to": ["x"]}]})


def test_on_written_unquoted_in_yaml_is_the_subscriptions_event_list(make_config: Callable[..., NodeConfig]) -> None:
    """PyYAML reads `on:` as the boolean true (YAML 1.1); the configuration takes it as `on`."""
    import yaml

    section = yaml.safe_load("""
targets: {ris: {kind: hl7, host: 127.0.0.1, port: 2575}}
subscriptions:
  - {on: [job.done], to: [ris]}
""")
    assert True in section["subscriptions"][0]
    config = make_config(notifications=section)
    assert config.notifications.subscriptions[0].on == ["job.done"]
