"""The index on PostgreSQL (dicom_node/storage/index_postgres.py): the statement translation, and the
whole node on one PostgreSQL index as separate role processes, through a database restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from dicom_node.storage.index_postgres import to_postgres

from ..conftest import TEST_SCU, config_dict, new_postgres_database
from ..net.test_storage_scp import send
from ..support import processes
from ..support.external_ai import ExternalAI
from ..support.peers import free_port, serve_role, stop_process, wait_for, wait_for_port


@pytest.mark.parametrize("sqlite, postgres", [
    ("SELECT * FROM t WHERE a = ? AND b LIKE 'x?%'", "SELECT * FROM t WHERE a = %s AND b LIKE 'x?%%'"),
    ("SELECT a % 2 FROM t WHERE b = ?", "SELECT a %% 2 FROM t WHERE b = %s"),
    ("INSERT OR IGNORE INTO t(a) VALUES(?)", "INSERT INTO t(a) VALUES(%s) ON CONFLICT DO NOTHING"),
    ("INSERT OR IGNORE INTO t(a) VALUES(?) RETURNING id", "INSERT INTO t(a) VALUES(%s) ON CONFLICT DO NOTHING RETURNING id"),
    ("UPDATE t SET a = max(t.a, excluded.a), b = min(b, ?)", "UPDATE t SET a = GREATEST(t.a, excluded.a), b = LEAST(b, %s)"),
    ("SELECT max(a) FROM t", "SELECT max(a) FROM t"),
    ("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, x REAL, b BLOB)",
     "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, n BIGINT NOT NULL, x DOUBLE PRECISION, b BYTEA)"),
])
def test_statements_written_for_sqlite_are_translated(sqlite: str, postgres: str) -> None:
    assert to_postgres(sqlite) == postgres


def write_config(tmp_path: Path, url: str, port: int, pacs_port: int, pipeline: dict, lease_seconds: float,
                 name: str = "node.yaml", **overrides: Any) -> Path:
    """A node on the PostgreSQL index ``url`` whose CT route sends ``pipeline``'s results to the PACS."""
    data = config_dict(
        tmp_path, node={"ae_title": "AI_NODE", "host": "127.0.0.1", "port": port, "workers": 1},
        index={"path": str(tmp_path / "local" / "index.sqlite"), "url": url},
        peers=[{"name": "scu", "ae_title": TEST_SCU, "host": "127.0.0.1", "port": 1, "receive": False},
               {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port, "send": False}],
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "p", "destinations": ["pacs"]}],
        pipelines={"p": pipeline}, results={"path": str(tmp_path / "results")},
        jobs={"workers": 1, "poll_seconds": 0.2, "lease_seconds": lease_seconds, "stalled_seconds": lease_seconds},
        delivery={"interval_seconds": 0.2, "retry_base_seconds": 0.5, "retry_max_seconds": 2}, **overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_the_node_runs_on_postgresql_as_role_processes_and_survives_a_database_restart(
        tmp_path: Path, postgres_server: object) -> None:
    """Listener, worker and sender processes on one PostgreSQL index: a study in, its SEG and SR
    out; the database is killed and restarted; the processes reconnect by themselves and the next
    study goes through too. While the database is down the listener acknowledges nothing."""
    from ai.phantom import make_phantom
    from dicom_node.tools.synthetic import write_volume_series

    pacs = ExternalAI("PACS")
    port = free_port()
    path = write_config(tmp_path, new_postgres_database(postgres_server), port, pacs.port, {"kind": "classical"}, 30)
    procs = {}
    try:
        procs["listener"] = serve_role(path, "listener", tmp_path / "listener.log")
        wait_for_port(port, procs["listener"])
        procs["worker"] = serve_role(path, "worker", tmp_path / "worker.log")
        procs["sender"] = serve_role(path, "sender", tmp_path / "sender.log")

        def study(seed: int) -> tuple[str, list[Path]]:
            phantom = make_phantom(seed, shape=(16, 64, 64), spacing=(2.5, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
            files = write_volume_series(phantom.volume, tmp_path / f"ct{seed}", seed=seed)
            return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), files

        def results_of(study_uid: str) -> list[str]:
            return sorted(d.Modality for d in pacs.received if str(d.StudyInstanceUID) == study_uid)

        first, files = study(3)
        assert send(port, files) == [0] * len(files)
        wait_for(lambda: results_of(first) == ["SEG", "SR"], 120, "the first study's SEG and SR")

        server = postgres_server  # the session's cluster: killed (SIGKILL) and started again
        server.kill()  # type: ignore[attr-defined]
        down, down_files = study(4)
        statuses = send(port, down_files[:2])
        assert all(s != 0 for s in statuses), f"acknowledged while the index was down: {statuses}"
        server.restart()  # type: ignore[attr-defined]

        second, files = study(5)
        deadline = time.monotonic() + 60
        while (statuses := send(port, files)) != [0] * len(files) and time.monotonic() < deadline:
            time.sleep(1)  # the listener's first statements after the restart reconnect
        assert statuses == [0] * len(files)
        wait_for(lambda: results_of(second) == ["SEG", "SR"], 120, "the second study's SEG and SR after the restart")
        assert results_of(first) == ["SEG", "SR"]  # nothing went twice
        out = processes.run([sys.executable, "-m", "dicom_node.cli", "--config", str(path), "status", "--json"],
                             timeout=60)
        assert out.returncode == 0 and first in out.stdout and second in out.stdout
        out = processes.run([sys.executable, "-m", "dicom_node.cli", "--config", str(path), "jobs", "--json"],
                             timeout=60)
        listed = json.loads(out.stdout)
        # procrastinate ran them and keeps nothing of a finished job; the jobs table is the record
        assert listed["engine"] == {"name": "procrastinate", "procrastinate_jobs": {}}
        assert sorted(j["state"] for j in listed["jobs"]) == ["done", "done"]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                stop_process(proc, 30)
        pacs.stop()


@pytest.mark.slow
def test_a_worker_host_killed_mid_job_on_postgresql_and_the_job_completes_once_elsewhere(
        tmp_path: Path, postgres_server: object) -> None:
    """The worker role's whole process group (a host) dies with SIGKILL while the model runs; a
    worker role started as another host gets the job from procrastinate once the dead worker's
    heartbeat is 3 s old; the PACS gets one SEG and one SR."""
    import os
    import signal

    from ai.phantom import make_phantom
    from dicom_node.storage.index import Index
    from dicom_node.tools.synthetic import write_volume_series

    url = new_postgres_database(postgres_server)
    pacs = ExternalAI("PACS")
    port = free_port()
    path = write_config(tmp_path, url, port, pacs.port, {"kind": "model", "model": "ct-organs", "device": "cpu"}, 3)
    procs: list[subprocess.Popen[bytes]] = []

    def start(role: str, name: str) -> subprocess.Popen[bytes]:
        proc = serve_role(path, role, tmp_path / f"{name}.log", own_session=True)  # its own "host"
        procs.append(proc)
        return proc

    index = Index(url)
    try:
        wait_for_port(port, start("listener", "listener"))
        first_host = start("worker", "worker-host-1")
        start("sender", "sender")
        phantom = make_phantom(21, shape=(80, 192, 192), spacing=(2.0, 1.5, 1.5), liver_lesions=(0, 0), lung_nodules=(0, 0))
        files = write_volume_series(phantom.volume, tmp_path / "ct", seed=21)
        assert send(port, files) == [0] * len(files)
        wait_for(lambda: index.query("SELECT 1 FROM jobs WHERE state = 'running'"), 120, "the job to start")
        time.sleep(1.0)  # into the model
        os.killpg(first_host.pid, signal.SIGKILL)  # the host: the role process and its worker process
        first_host.wait(timeout=30)
        assert index.query("SELECT state FROM jobs")[0]["state"] == "running", "the job finished before the kill"
        start("worker", "worker-host-2")
        wait_for(lambda: sorted(d.Modality for d in pacs.received) == ["SEG", "SR"], 180,
                 "the SEG and SR after the worker host died")
        job = index.query("SELECT state, attempts FROM jobs")[0]
        assert (job["state"], job["attempts"]) == ("done", 2)
        assert "handed out again" in (tmp_path / "worker-host-2.log").read_text()  # procrastinate's stalled sweep
        time.sleep(1.0)  # nothing else on its way
        assert sorted(d.Modality for d in pacs.received) == ["SEG", "SR"]
    finally:
        index.close()
        for proc in procs:
            if proc.poll() is None:
                stop_process(proc, 30)
        pacs.stop()


@pytest.mark.slow
def test_a_listener_host_killed_mid_study_and_the_pacs_retry_to_another_listener_completes_it(
        tmp_path: Path, postgres_server: object) -> None:
    """Two listener hosts behind one AE title on one PostgreSQL index and one storage folder.
    The PACS sends a study to the first; after 6 instances are acknowledged that host dies
    (SIGKILL of its process group) and the next C-STORE fails; the PACS sends what was not
    acknowledged to the second. The series completes with every instance, once: one job, one
    SEG over all 16 slices and one SR at the PACS."""
    import os
    import signal

    from pynetdicom import AE

    from ai.phantom import make_phantom
    from dicom_node.storage.index import Index
    from dicom_node.tools.synthetic import write_volume_series

    url = new_postgres_database(postgres_server)
    pacs = ExternalAI("PACS")
    ports = {"a": free_port(), "b": free_port()}
    # The PACS's retry comes within seconds here; a series is complete after 8 s without an instance.
    paths = {host: write_config(tmp_path, url, port, pacs.port, {"kind": "classical"}, 30, name=f"node-{host}.yaml",
                                completion={"series_stable_seconds": 8, "study_stable_seconds": 10,
                                            "sweep_interval_seconds": 0.2})
             for host, port in ports.items()}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    index = Index(url)
    try:
        for host in ports:
            procs[host] = serve_role(paths[host], "listener", tmp_path / f"listener-{host}.log", own_session=True)
            wait_for_port(ports[host], procs[host])
        procs["worker"] = serve_role(paths["a"], "worker", tmp_path / "worker.log")
        procs["sender"] = serve_role(paths["a"], "sender", tmp_path / "sender.log")
        phantom = make_phantom(8, shape=(16, 64, 64), spacing=(2.5, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
        files = write_volume_series(phantom.volume, tmp_path / "ct", seed=8)
        series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)

        ae = AE(ae_title=TEST_SCU)
        meta = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", ports["a"], ae_title="AI_NODE")
        assert assoc.is_established
        acknowledged = []
        for path in files[:6]:
            assert int(assoc.send_c_store(path).Status) == 0
            acknowledged.append(path)
        os.killpg(procs["a"].pid, signal.SIGKILL)  # the first listener host
        procs["a"].wait(timeout=30)
        if assoc.is_established:  # the PACS may not have noticed the connection drop yet
            assert "Status" not in assoc.send_c_store(files[6]), "a C-STORE was answered by a dead host"
        wait_for(lambda: not assoc.is_established, 10, "the PACS to see the association drop")
        retry = [p for p in files if p not in acknowledged]
        assert send(ports["b"], retry) == [0] * len(retry)  # the PACS's retry, to the other listener

        wait_for(lambda: sorted(d.Modality for d in pacs.received) == ["SEG", "SR"], 120, "the study's SEG and SR")
        [series] = index.query("SELECT state, version, instance_count FROM series WHERE series_uid = ?", (series_uid,))
        assert (series["state"], series["version"], series["instance_count"]) == ("complete", 1, 16)
        assert [(j["state"], j["attempts"]) for j in index.query("SELECT state, attempts FROM jobs")] == [("done", 1)]
        seg = next(d for d in pacs.received if d.Modality == "SEG")
        referenced = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                      for i in s.ReferencedInstanceSequence}
        assert referenced == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
        stored = index.query("SELECT path FROM instances WHERE series_uid = ?", (series_uid,))
        assert len(stored) == 16 and all(Path(r["path"]).exists() for r in stored)  # both hosts' files, one folder
        time.sleep(1.0)  # nothing else on its way
        assert sorted(d.Modality for d in pacs.received) == ["SEG", "SR"]
    finally:
        index.close()
        for proc in procs.values():
            if proc.poll() is None:
                stop_process(proc, 30)
        pacs.stop()
