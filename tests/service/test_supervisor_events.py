"""The supervisor's watch on its listener processes (service/supervisor.py): one killed by
SIGKILL is logged and recorded as a ``process.died`` event, once, while the others serve on."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

from dicom_node.storage.index import Index
from tests.support.peers import free_port, wait_for, wait_for_port
from tests.support.processes import start

pytestmark = pytest.mark.slow


def _listeners(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                if parent == pid and (entry / "comm").read_text().startswith("dn-listener"):
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def test_a_listener_that_dies_is_an_event(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"port": port, "workers": 2}, "storage": {"path": str(tmp_path / "storage"), "min_free_mb": 0},
        "index": {"path": str(tmp_path / "index.sqlite")}, "audit": {"path": str(tmp_path / "audit.jsonl")},
        "web": {"enabled": False}, "routes": []}))
    serve = start([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "serve"], tmp_path / "serve.log",
                  name="dicom-node serve").proc
    try:
        wait_for_port(port, serve)
        listeners = wait_for(lambda: (found := _listeners(serve.pid)) and len(found) == 2 and found, 30, "two listeners")
        os.kill(listeners[0], signal.SIGKILL)  # ours: a child of the serve process this test started
        index = Index(tmp_path / "index.sqlite")
        try:
            rows = wait_for(lambda: index.query("SELECT payload FROM events WHERE type = 'process.died'"), 30,
                            "the process.died event")
            assert len(rows) == 1 and f'"pid": {listeners[0]}' in rows[0]["payload"] and '"listener"' in rows[0]["payload"]
        finally:
            index.close()
        wait_for_port(port, serve)  # the port still answers
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
