from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from dicom_node.storage.audit import AuditLog
from dicom_node.storage.audit_chain import read_audit


def test_lines_are_json_and_complete_under_concurrency(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a" / "audit.jsonl")
    threads = [threading.Thread(target=lambda i=i: [log.write("association", n=i, k=k) for k in range(50)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    records = read_audit(tmp_path / "a" / "audit.jsonl")
    assert len(records) == 200
    assert all(r["event"] == "association" and "time" in r for r in records)
    log.write("after-close")  # ignored, never raises


def test_a_reader_never_sees_half_a_record_while_other_processes_write(tmp_path: Path) -> None:
    """The web API and tests read the file while listener processes append to it (a CI run once
    read '{"time": ..., "event": "ass' and failed)."""
    import subprocess
    import sys

    from dicom_node.storage.audit_verify import verify

    path = tmp_path / "audit.jsonl"
    writer = ("import sys\nfrom pathlib import Path\nfrom dicom_node.storage.audit import AuditLog\n"
              "log = AuditLog(Path(sys.argv[1]), 'AI_NODE')\n"
              "for k in range(300): log.write('association', outcome='released', n=k, padding='x' * (k * 97 % 20000))\n"
              "log.close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(path)]) for _ in range(2)]
    reads = 0
    try:
        while any(p.poll() is None for p in procs) or reads == 0:
            if path.exists():
                records = read_audit(path)  # raises on a partial line
                assert verify(path)[1] == []
                assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
                reads += 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.wait(timeout=60) == 0 for p in procs)
    assert len(read_audit(path)) == 600 and reads > 1


def test_the_chain_holds_across_processes_and_verify_finds_every_kind_of_tampering(tmp_path: Path) -> None:
    import subprocess
    import sys

    from dicom_node.cli import main
    from dicom_node.storage.audit_verify import verify

    path = tmp_path / "audit.jsonl"
    writer = ("import sys\nfrom pathlib import Path\nfrom dicom_node.storage.audit import AuditLog\n"
              "log = AuditLog(Path(sys.argv[1]), 'AI_NODE')\n"
              "for k in range(100): log.write('association', outcome='released', n=k, pid=sys.argv[2])\nlog.close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(path), str(n)]) for n in range(3)]
    local = AuditLog(path, "AI_NODE")  # and threads of this process at the same time
    threads = [threading.Thread(target=lambda: [local.write("listener_started", pid=1) for _ in range(50)]) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(timeout=60) == 0 for p in procs)
    local.close()
    assert verify(path) == (400, [])
    records = read_audit(path)
    assert [r["seq"] for r in records] == list(range(1, 401))
    assert main(["audit", "verify", str(path)]) == 0

    lines = path.read_text().splitlines(keepends=True)
    changed = lines[:]
    changed[9] = changed[9].replace('"time": "', '"time": "1', 1)  # one character of record 10
    (tmp_path / "changed.jsonl").write_text("".join(changed))
    assert [b.line for b in verify(tmp_path / "changed.jsonl")[1]] == [11]
    (tmp_path / "removed.jsonl").write_text("".join(lines[:20] + lines[21:]))
    assert [b.problem.split(" (")[0] for b in verify(tmp_path / "removed.jsonl")[1]] == [
        "line 20 was changed, or lines before this one were removed", "1 record(s) missing before this one"]
    (tmp_path / "inserted.jsonl").write_text("".join(lines[:5] + [lines[2]] + lines[5:]))
    assert verify(tmp_path / "inserted.jsonl")[1]
    assert main(["audit", "verify", str(tmp_path / "changed.jsonl")]) == 1


def test_records_carry_dicom_audit_messages(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", "AI_NODE")
    log.write("listener_started", ae_title="AI_NODE", pid=7)
    log.write("association", outcome="released", calling_ae="CT01", called_ae="AI_NODE", address="10.0.0.5", port=1234,
              instances_stored=3, instances_failed=0,
              studies=[{"study_uid": "1.2.3", "patient_id": "P1", "sop_classes": {"1.2.840.10008.5.1.4.1.1.2": 3}}])
    log.write("association", outcome="rejected", reason="TLS: client certificate missing", address="10.0.0.9", port=99,
              calling_ae="", called_ae="")
    log.write("result_sent", peer="pacs", ae_title="PACS", host="10.0.0.2", object="seg", study_uid="1.2.3")
    log.write("retention_removed", study_uid="1.2.3", instances=3, bytes=10, reason="older than 30 days")
    log.write("job_not_applicable", job=1)
    log.close()
    started, stored, refused, sent, removed, other = (r.get("dicom") for r in read_audit(tmp_path / "audit.jsonl"))
    assert started["EventIdentification"]["EventID"]["csd-code"] == "110100"
    assert started["EventIdentification"]["EventTypeCode"][0]["originalText"] == "Application Start"
    event = stored["EventIdentification"]
    assert (event["EventID"]["originalText"], event["EventActionCode"], event["EventOutcomeIndicator"]) == (
        "DICOM Instances Transferred", "C", "0")
    source, destination = stored["ActiveParticipant"]
    assert (source["UserID"], source["UserIsRequestor"], source["NetworkAccessPointID"], source["RoleIDCode"]["csd-code"]) == (
        "CT01", True, "10.0.0.5", "110153")
    assert destination["RoleIDCode"]["originalText"] == "Destination Role ID"
    study, patient = stored["ParticipantObjectIdentification"]
    assert (study["ParticipantObjectID"], study["ParticipantObjectIDTypeCode"]["csd-code"]) == ("1.2.3", "110180")
    assert study["ParticipantObjectDescription"]["SOPClass"] == [{"UID": "1.2.840.10008.5.1.4.1.1.2", "NumberOfInstances": 3}]
    assert (patient["ParticipantObjectID"], patient["ParticipantObjectTypeCode"], patient["ParticipantObjectTypeCodeRole"]) == (
        "P1", "1", "1")
    assert "PatientName" not in str(stored) and "patient_name" not in str(stored)
    assert (refused["EventIdentification"]["EventID"]["originalText"],
            refused["EventIdentification"]["EventTypeCode"][0]["originalText"]) == ("Security Alert", "Node Authentication")
    assert refused["ParticipantObjectIdentification"][0]["ParticipantObjectDetail"][0]["value"] == "TLS: client certificate missing"
    assert (sent["EventIdentification"]["EventID"]["originalText"], sent["EventIdentification"]["EventActionCode"]) == ("Export", "R")
    assert removed["EventIdentification"]["EventID"]["originalText"] == "DICOM Study Deleted"
    assert other is None and started["AuditSourceIdentification"]["AuditSourceID"] == "AI_NODE"


def test_messages_reach_a_syslog_repository_over_tls_with_octet_counting(tmp_path: Path) -> None:
    import json
    import re
    import socket
    import ssl

    from dicom_node.config import SyslogSection

    from ..support.certs import Authority

    ca = Authority("audit", tmp_path / "pki")
    repository = ca.issue("audit.hospital.test", ips=["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(repository.certificate), str(repository.private_key))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    frames: list[bytes] = []

    def serve() -> None:  # an audit repository: TLS, RFC 5425 framing ("LEN SP MSG")
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            buffer = b""
            while len(frames) < 3:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while b" " in buffer:
                    size, rest = buffer.split(b" ", 1)
                    if len(rest) < int(size):
                        break
                    frames.append(rest[:int(size)])
                    buffer = rest[int(size):]

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    log = AuditLog(tmp_path / "audit.jsonl", "AI_NODE", SyslogSection(host="127.0.0.1", port=port, ca_certificates=ca.pem),
                   key_file=tmp_path / "audit.key", checkpoint_records=2)
    log.write("listener_started", pid=5)
    log.write("association", outcome="rejected", reason="calling AE title not recognised", calling_ae="X", address="127.0.0.1")
    log.write("job_not_applicable", job=3)  # not a DICOM audit event: the file only
    thread.join(timeout=30)
    log.close()
    listener.close()
    assert len(frames) == 3
    # The signed checkpoint after the second record goes to the repository too, off this machine.
    checkpoint = re.match(rb"^<85>1 \S+ \S+ AI_NODE \d+ AUDIT-CHECKPOINT - \xef\xbb\xbf(.*)$", frames[2], re.S)
    assert checkpoint, frames[2][:120]
    assert json.loads(checkpoint.group(1))["checkpoint"] == 1 and json.loads(checkpoint.group(1))["seq"] == 3
    assert read_audit(tmp_path / "audit.jsonl")[2]["mac"] == json.loads(checkpoint.group(1))["mac"]
    header = re.compile(rb"^<(\d+)>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+ AI_NODE \d+ DICOM-AUDIT - \xef\xbb\xbf")
    priorities = []
    for frame in frames[:2]:
        match = header.match(frame)
        assert match, frame[:120]
        priorities.append(int(match.group(1)))
        assert "EventIdentification" in json.loads(frame[match.end():])
    assert priorities == [85, 84]  # authpriv.notice, then authpriv.warning for the security alert


def _anchored_trail(tmp_path: Path, records: int = 120, every: int = 25) -> tuple[Path, Path]:
    """A trail written by the node with a key: checkpoints every ``every`` records."""
    path, key = tmp_path / "audit.jsonl", tmp_path / "audit.key"
    log = AuditLog(path, "AI_NODE", key_file=key, checkpoint_records=every)
    for k in range(records):
        log.write("association", outcome="released", n=k)
    log.close()
    return path, key


def _problems(path: Path, key: Path) -> list[str]:
    from dicom_node.storage.audit_chain import load_key
    from dicom_node.storage.audit_verify import verify

    return [b.problem for b in verify(path, load_key(key))[1]]


def test_an_anchored_trail_verifies_whole_with_signed_checkpoints(tmp_path: Path) -> None:
    from dicom_node.cli import main
    from dicom_node.storage.audit_verify import records_after_last_checkpoint

    path, key = _anchored_trail(tmp_path)
    records = read_audit(path)
    checkpoints = [r for r in records if r["event"] == "audit_checkpoint"]
    assert [c["checkpoint"] for c in checkpoints] == [1, 2, 3, 4]  # one after every 25 records
    assert all(len(c["mac"]) == 64 for c in checkpoints)
    assert _problems(path, key) == []
    assert records_after_last_checkpoint(path) == len(records) - 1 - records.index(checkpoints[-1])
    assert key.stat().st_mode & 0o077 == 0
    assert main(["audit", "verify", str(path)]) == 0


@pytest.mark.parametrize("cut", [1, 50])
def test_cutting_the_end_is_named_by_verify_and_by_the_next_write(tmp_path: Path, cut: int) -> None:
    path, key = _anchored_trail(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-cut]))
    last = len(lines)
    assert _problems(path, key)[0] == (f"{cut} record(s) missing at the end: the file ends at seq {last - cut}, "
                                       f"the node wrote up to seq {last}")
    # The node's next write notices, records a Security Alert, and goes on.
    log = AuditLog(path, "AI_NODE", key_file=key, checkpoint_records=25)
    log.write("listener_started", pid=1)
    log.close()
    records = read_audit(path)
    alert = records[last - cut]
    assert alert["event"] == "security_alert" and alert["alert"] == "audit_tampered"
    assert f"{cut} record(s) removed from its end" in alert["description"]
    assert alert["dicom"]["EventIdentification"]["EventID"]["csd-code"] == "110113"
    assert any("the node found the trail tampered with" in p and "removed from its end" in p
               for p in _problems(path, key))


def test_a_rewritten_last_record_is_named_and_the_next_record_does_not_hide_it(tmp_path: Path) -> None:
    path, key = _anchored_trail(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    forged = lines[-1].replace(b'"outcome": "released"', b'"outcome": "aborted"')
    assert forged != lines[-1]
    path.write_bytes(b"".join(lines[:-1] + [forged]))
    assert _problems(path, key) == [f"record seq {len(lines)} was changed after the node wrote it (it differs from the "
                                    "anchor)"]
    # Rewrite, then the node appends: the chain is whole again, but the alert stays in the trail.
    log = AuditLog(path, "AI_NODE", key_file=key, checkpoint_records=25)
    log.write("listener_started", pid=1)
    log.close()
    assert _problems(path, key) == [f"the node found the trail tampered with: the last record (seq {len(lines)}) was "
                                    "changed after the node wrote it"]


def test_a_removed_checkpoint_is_named_even_when_the_chain_is_rebuilt(tmp_path: Path) -> None:
    from dicom_node.storage.audit_chain import GENESIS, line_hash

    path, key = _anchored_trail(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    where = next(n for n, line in enumerate(lines) if b'"checkpoint": 2,' in line)
    path.write_bytes(b"".join(lines[:where] + lines[where + 1:]))
    problems = _problems(path, key)
    assert "checkpoint 3 follows checkpoint 1: checkpoint(s) 2-2 removed" in problems
    # Someone without the key removes it and re-chains every record after it: the signatures say so.
    records = [json.loads(line) for line in lines[:where] + lines[where + 1:]]
    prev, out = GENESIS, []
    for seq, record in enumerate(records, start=1):
        record["seq"], record["prev"] = seq, prev
        line = json.dumps(record).encode()
        out.append(line + b"\n")
        prev = line_hash(line)
    path.write_bytes(b"".join(out))
    problems = _problems(path, key)
    assert "checkpoint 3's signature does not match: the records before it were changed and chained again, or the " \
           "checkpoint is forged" in problems
    assert any(p.startswith("1 record(s) missing at the end") for p in problems)
    # And with the anchor removed too, the missing anchor is named.
    (tmp_path / "audit.jsonl.anchor").unlink()
    assert any("audit.jsonl.anchor is missing" in p for p in _problems(path, key))


def test_a_forged_anchor_is_refused(tmp_path: Path) -> None:
    path, key = _anchored_trail(tmp_path)
    anchor = tmp_path / "audit.jsonl.anchor"
    data = json.loads(anchor.read_text())
    data["seq"] -= 5
    anchor.write_text(json.dumps(data))
    assert _problems(path, key) == [f"the anchor {anchor} is not signed by the audit key (forged or changed)"]
