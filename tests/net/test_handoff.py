"""The supervisor hands each connection to the listener process with the fewest open ones."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ..conftest import TEST_SCU, config_dict
from ..support.peers import start_node, wait_for


def _associations(port: int, count: int) -> list:
    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", port, ae_title="AI_NODE") for _ in range(count)]
    assert all(a.is_established for a in held)
    assert [int(a.send_c_echo().Status) for a in held] == [0] * count
    return held


def _pids(audit: Path) -> list[int]:
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    return [line["pid"] for line in lines if line["event"] == "association"]


def test_concurrent_associations_go_to_different_listener_processes(tmp_path: Path) -> None:
    """With three listeners, three associations open at once land in three processes, and
    once they close the next three do too (the kernel's SO_REUSEPORT hash, used before, put
    two of three in one process most of the time)."""
    node = start_node(tmp_path / "node", {**config_dict(tmp_path), "node": {"ae_title": "AI_NODE", "host": "127.0.0.1",
                                                                            "workers": 3}})
    audit = tmp_path / "audit.jsonl"
    try:
        for round_ in (1, 2):
            held = _associations(node.port, 3)
            for assoc in held:
                assoc.release()
            wait_for(lambda: len(_pids(audit)) == 3 * round_, 10, f"{3 * round_} association audit lines")
            time.sleep(0.2)  # the listeners' "closed" notes reach the supervisor
            assert len(set(_pids(audit)[-3:])) == 3, _pids(audit)
    finally:
        node.stop()


def test_a_dead_listener_gets_no_more_connections(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess

    node = start_node(tmp_path / "node", {**config_dict(tmp_path), "node": {"ae_title": "AI_NODE", "host": "127.0.0.1",
                                                                            "workers": 2}})
    try:
        listeners = subprocess.run(["pgrep", "-P", str(node.proc.pid), "-f", "spawn_main"], capture_output=True, text=True).stdout.split()
        first = _associations(node.port, 1)[0]
        first.release()
        wait_for(lambda: _pids(tmp_path / "audit.jsonl"), 10, "the first association's audit line")
        victim = _pids(tmp_path / "audit.jsonl")[0]
        assert str(victim) in listeners
        os.kill(victim, signal.SIGKILL)  # a listener process this test's node started
        time.sleep(0.5)
        for _ in range(4):  # every later association is served, by the survivor
            for assoc in _associations(node.port, 1):
                assoc.release()
        wait_for(lambda: len(_pids(tmp_path / "audit.jsonl")) == 5, 10, "four more audit lines")
        assert set(_pids(tmp_path / "audit.jsonl")[1:]) == {int(p) for p in listeners} - {victim}
    finally:
        node.stop()
