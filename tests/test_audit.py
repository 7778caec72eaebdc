from __future__ import annotations

import threading
from pathlib import Path

from dicom_node.audit import AuditLog, read_audit


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
