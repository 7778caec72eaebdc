"""Crash safety: a node killed with SIGKILL mid-study loses no acknowledged instance."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from pydicom import dcmread

from dicom_node.storage.index import Index
from dicom_node.storage.recovery import recover
from dicom_node.storage.store import InstanceStore
from dicom_node.tools.synthetic import write_ct_series

from ..conftest import Dcmtk, config_dict, dataset_bytes, free_port
from ..support import processes

DICOM_NODE = [sys.executable, "-m", "dicom_node.cli"]


def _start_node(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen([*DICOM_NODE, "--config", str(config_path), "serve"], stdout=out, stderr=subprocess.STDOUT)
    processes.watch(proc, log=log, name="dicom-node serve")
    port = yaml.safe_load(config_path.read_text())["node"]["port"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"node exited early: {log.read_text()}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("node did not start listening within 30 s")


def _stored_count(storage: Path) -> int:
    return sum(1 for p in storage.rglob("*.dcm") if ".incoming" not in p.parts)


def _acknowledged(storescu_output: str) -> list[str]:
    """Files for which storescu received a Success response, in order."""
    acked, current = [], None
    for line in storescu_output.splitlines():
        if m := re.search(r"Sending file: (.+)$", line):
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = None
    return acked


def test_sigkill_mid_study_loses_no_acknowledged_instance(dcmtk: Dcmtk, tmp_path: Path) -> None:
    write_ct_series(tmp_path / "study", 300, 128, 128, seed=7)
    port = free_port()
    config = config_dict(tmp_path, node={"port": port})
    config_path = tmp_path / "node.yaml"
    config_path.write_text(yaml.safe_dump(config))
    storage = Path(config["storage"]["path"])
    log = tmp_path / "node.log"

    node = _start_node(config_path, log)
    sender = subprocess.Popen(
        [dcmtk.storescu, "-v", "+sd", "-aet", "STORESCU", "-aec", "AI_NODE", "127.0.0.1", str(port), str(tmp_path / "study")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk.env(),
    )
    try:
        deadline = time.monotonic() + 60
        while _stored_count(storage) < 100 and time.monotonic() < deadline and sender.poll() is None:
            time.sleep(0.005)
        os.kill(node.pid, signal.SIGKILL)  # only the process this test started
        node.wait(timeout=10)
        output, _ = sender.communicate(timeout=60)
    finally:
        if node.poll() is None:
            node.kill()
        if sender.poll() is None:
            sender.kill()
    acked = _acknowledged(output)
    print(f"storescu got Success for {len(acked)} of 300 before the node was killed")
    assert 50 <= len(acked) < 300, "the kill must land part-way through the study"

    node = _start_node(config_path, log)
    try:
        # No partial file is visible to readers: nothing hidden outside .incoming, .incoming empty.
        visible = [p for p in storage.rglob("*") if p.is_file() and ".incoming" not in p.parts]
        assert all(p.suffix == ".dcm" and not p.name.startswith(".") for p in visible)
        assert list((storage / ".incoming").iterdir()) == []
        for p in visible:
            dcmread(p)  # every visible file is a complete dataset

        index = Index(Path(config["index"]["path"]), synchronous="NORMAL")
        try:
            for name in acked:
                uid = str(dcmread(name, stop_before_pixels=True).SOPInstanceUID)
                row = index.instance(uid)
                assert row is not None, f"acknowledged {name} is not in the index after restart"
                assert dataset_bytes(Path(row["path"])) == dataset_bytes(Path(name))
        finally:
            index.close()

        # The rest can be sent again (the acknowledged ones too: idempotent).
        resend = processes.run(
            [dcmtk.storescu, "+sd", "-aet", "STORESCU", "-aec", "AI_NODE", "127.0.0.1", str(port), str(tmp_path / "study")],
            env=dcmtk.env(), timeout=120,
        )
        assert resend.returncode == 0, resend.stderr
        status = processes.run([*DICOM_NODE, "--config", str(config_path), "status", "--json"], timeout=60)
        assert status.returncode == 0, status.stderr
        [study] = json.loads(status.stdout)["studies"]
        assert study["series"][0]["instance_count"] == 300
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
    assert "Recovered from an unclean shutdown" in log.read_text()


def test_recover_indexes_files_the_index_lacks(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 3, 32, 32)
    store = InstanceStore(tmp_path / "storage")
    index = Index(tmp_path / "index.sqlite")
    from dicom_node.storage.header import read_header

    for f in files:  # as if the node died between rename and index commit
        store.write_bytes(f.read_bytes(), read_header(f))
    (store.incoming / ".recv-zzz.dcm").write_bytes(b"half")
    report = recover(store, index)
    assert (report.leftovers_removed, report.reconciled, report.files_indexed, report.files_unreadable) == (1, True, 3, 0)
    assert index.studies()[0]["series"][0]["instance_count"] == 3
    from dicom_node.storage.recovery import mark_clean_shutdown

    mark_clean_shutdown(index)
    assert recover(store, index).reconciled is False  # clean stop: no walk needed
    index.close()
