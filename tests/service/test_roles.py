"""``dicom-node serve --role listener|worker|sender``: the node's parts as separate processes on
one index, as systemd units would run them; two senders, one sending and one standing by."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pydicom
import pytest
import yaml

from dicom_node.tools.synthetic import write_volume_series

from ..conftest import TEST_SCU, config_dict
from ..net.test_storage_scp import send
from ..support.external_ai import ExternalAI
from ..support.peers import free_port, serve_role, stop_process, wait_for, wait_for_port

pytestmark = pytest.mark.slow


def test_listener_worker_and_two_senders_as_separate_processes(tmp_path: Path) -> None:
    pacs = ExternalAI("PACS")
    port = free_port()
    data = config_dict(
        tmp_path, node={"ae_title": "AI_NODE", "host": "127.0.0.1", "port": port, "workers": 1},
        peers=[{"name": "scu", "ae_title": TEST_SCU, "host": "127.0.0.1", "port": 1, "receive": False},
               {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port, "send": False}],
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline", "destinations": ["pacs"]}],
        pipelines={"baseline": {"kind": "classical"}}, results={"path": str(tmp_path / "results")},
        jobs={"workers": 1, "poll_seconds": 0.2}, delivery={"interval_seconds": 0.2, "retry_base_seconds": 0.5})
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["listener"] = serve_role(path, "listener", tmp_path / "listener.log")
        wait_for_port(port, procs["listener"])
        procs["worker"] = serve_role(path, "worker", tmp_path / "worker.log")
        procs["sender-a"] = serve_role(path, "sender", tmp_path / "sender-a.log")
        procs["sender-b"] = serve_role(path, "sender", tmp_path / "sender-b.log")
        lock = Path(f"{tmp_path / 'index.sqlite'}.sender.lock")
        holder = int(wait_for(lambda: lock.exists() and lock.read_text().strip(), 60, "a sender holding the lock"))
        standby = next(name for name in ("sender-a", "sender-b") if procs[name].pid != holder)
        wait_for(lambda: "standing by" in (tmp_path / f"{standby}.log").read_text(), 60, "the other sender standing by")

        # The sending one dies (SIGKILL, as a crashed host would): the standby takes over.
        os.kill(holder, signal.SIGKILL)
        from ai.phantom import make_phantom

        phantom = make_phantom(7, shape=(24, 64, 64), spacing=(2.5, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
        files = write_volume_series(phantom.volume, tmp_path / "ct", seed=7)
        assert send(port, files) == [0] * len(files)
        wait_for(lambda: {d.Modality for d in pacs.received} >= {"SEG", "SR"}, 120,
                 "SEG and SR at the PACS, delivered by the standby sender")
        assert "This process" in (tmp_path / f"{standby}.log").read_text()  # it became the sender
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        assert {str(d.StudyInstanceUID) for d in pacs.received} == {study}
        assert sorted(d.Modality for d in pacs.received) == ["SEG", "SR"]  # each once
        assert "analysis worker process" not in (tmp_path / "listener.log").read_text()  # the worker role ran it
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                stop_process(proc, 30)
        pacs.stop()
