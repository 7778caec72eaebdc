"""The job engines (dicom_node/flow/job_engine.py): queues per device kind on both engines; on
PostgreSQL, procrastinate: jobs deferred in the routing transaction, run by the node's worker,
fenced by their attempt number, retried and re-queued through procrastinate."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ai.phantom import make_phantom
from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError, LeaseLost
from dicom_node.flow.job_engine import TASK_NAME, dispatch_for, job_queue, procrastinate_counts, queue_for, worker_queues
from dicom_node.flow.jobs import JobQueue, JobState, NewJob
from dicom_node.flow.outbox import Candidate, Outbox
from dicom_node.flow.routing import route_completed
from dicom_node.flow.worker import Worker
from dicom_node.storage.index import Index
from dicom_node.tools.synthetic import write_volume_series

from ..conftest import new_postgres_database
from ..support import processes
from .test_worker import PEERS, index_series

PIPELINES = {"cpu": {"kind": "classical"}, "cuda": {"kind": "classical", "device": "cuda"},
             "big": {"kind": "classical", "queue": "big-memory"}, "auto": {"kind": "classical", "device": "auto"},
             # runs on the CPU (CI has no GPU) but goes to the gpu queue: what the queue tests look at
             "gpu-only": {"kind": "classical", "queue": "gpu"}}


def engine_config(make_config: Callable[..., NodeConfig], tmp_path: Path, url: str | None, pipeline: str,
                  **jobs: Any) -> NodeConfig:
    index = {"path": str(tmp_path / "index.sqlite")} | ({"url": url} if url else {})
    return make_config(peers=PEERS, index=index, pipelines=PIPELINES, results={"path": str(tmp_path / "results")},
                       routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": pipeline, "destinations": ["pacs"]}],
                       jobs={"retry_base_seconds": 10, "stalled_seconds": 3, "poll_seconds": 0.2} | jobs)


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    phantom = make_phantom(4, shape=(16, 48, 48), spacing=(3.0, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    return write_volume_series(phantom.volume, tmp_path / "series", seed=4)


@pytest.fixture
def pg_url(postgres_server: Any) -> str:
    return new_postgres_database(postgres_server)


def test_a_job_goes_to_the_queue_its_most_demanding_pipeline_needs(make_config: Callable[..., NodeConfig],
                                                                    tmp_path: Path) -> None:
    config = engine_config(make_config, tmp_path, None, "cpu")
    assert queue_for(config, ["cpu"]) == "default"
    assert queue_for(config, ["auto"]) == "default"  # CUDA when present, the CPU otherwise: any worker
    assert queue_for(config, ["cuda"]) == "gpu"
    assert queue_for(config, ["cpu", "cuda"]) == "gpu"  # the worker may have to fall through to it
    assert queue_for(config, ["big", "cuda"]) == "big-memory"
    assert worker_queues(config, has_gpu=lambda: True) == ["gpu", "default"]
    assert worker_queues(config, has_gpu=lambda: False) == ["default"]
    assert worker_queues(config, ["gpu"], has_gpu=lambda: False) == ["gpu"]
    pinned = engine_config(make_config, tmp_path, None, "cpu", queues=["big-memory"])
    assert worker_queues(pinned, has_gpu=lambda: True) == ["big-memory"]
    assert config.job_engine == "lease"
    with pytest.raises(ConfigError, match="procrastinate keeps its jobs in PostgreSQL"):
        engine_config(make_config, tmp_path, None, "cpu", engine="procrastinate")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_take_only_their_queues(make_config: Callable[..., NodeConfig], tmp_path: Path, series: list[Path],
                                        backend: str, request: pytest.FixtureRequest) -> None:
    """A GPU pipeline's job waits for a worker that serves the gpu queue; a CPU-only worker
    leaves it alone (lease engine on SQLite, procrastinate on PostgreSQL)."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    config = engine_config(make_config, tmp_path, url, "gpu-only")
    assert config.job_engine == ("procrastinate" if url else "lease")
    cpu_worker = Worker(config, queues=["default"], owner="cpu-host")
    try:
        index_series(cpu_worker.index, series)
        [job] = route_completed(cpu_worker.index, config, now=1000)
        assert job.queue == "gpu"
        assert cpu_worker.run(threading.Event(), burst=True) == 0
        assert cpu_worker.jobs.list()[0]["state"] == "queued"
        gpu_worker = Worker(config, queues=["gpu", "default"], owner="gpu-host")
        try:
            assert gpu_worker.run(threading.Event(), burst=True) == 1
        finally:
            gpu_worker.close()
        row = cpu_worker.jobs.list()[0]
        assert (row["state"], row["attempts"], row["queue"]) == ("done", 1, "gpu")
    finally:
        cpu_worker.close()


def new_job(key: str = "ct:1.2.3:v1", queue: str = "default") -> NewJob:
    return NewJob(key=key, route="ct", pipeline="cpu", series_uid="1.2.3", study_uid="1.2", series_version=1,
                  calling_ae="PACS", destinations=("pacs",), queue=queue)


def procrastinate_jobs(index: Index) -> list[dict[str, Any]]:
    return [dict(r) for r in index.query(
        "SELECT queue_name, task_name, priority, args::text AS args, status::text AS status, "
        "extract(epoch FROM scheduled_at) AS scheduled FROM procrastinate_jobs ORDER BY id")]


def test_procrastinate_hears_of_a_job_in_the_transaction_that_queues_it(make_config: Callable[..., NodeConfig],
                                                                          tmp_path: Path, pg_url: str) -> None:
    """The defer joins the routing transaction: rolled back with it, committed with it; a failed
    attempt and an operator's retry defer again (the backoff as procrastinate's schedule)."""
    config = engine_config(make_config, tmp_path, pg_url, "cpu", max_attempts=2)
    index = Index(pg_url)
    try:
        # No worker has installed procrastinate's schema yet: the routing transaction does,
        # and a rollback takes the schema back with the job (the next routing installs it again).
        queue = JobQueue(index, 2, 10, dispatch_for(config))
        with pytest.raises(RuntimeError), index.transaction() as db:
            assert JobQueue.add(db, new_job(), 100.0, 2, queue.dispatch)
            raise RuntimeError("routing failed after queueing")
        assert queue.list() == [] and procrastinate_counts(index) == {}

        with index.transaction() as db:
            assert JobQueue.add(db, new_job(queue="gpu"), 100.0, 2, queue.dispatch)
            assert not JobQueue.add(db, new_job(queue="gpu"), 100.0, 2, queue.dispatch)  # the same key: once
        [row] = queue.list()
        [deferred] = procrastinate_jobs(index)
        assert (deferred["queue_name"], deferred["task_name"], deferred["status"]) == ("gpu", TASK_NAME, "todo")
        assert f'"job_id": {row["id"]}' in deferred["args"]

        job = queue.start(row["id"], "w", 200.0, 60)
        assert job is not None and job.attempts == 1
        assert queue.fail(job.id, "w", "boom", 200.0, attempt=1) is JobState.QUEUED
        assert procrastinate_jobs(index)[-1]["scheduled"] == pytest.approx(210.0)  # 10 s backoff
        job = queue.start(row["id"], "w", 300.0, 60)
        assert job is not None and queue.fail(job.id, "w", "boom", 300.0, attempt=2) is JobState.DEAD
        assert len(procrastinate_jobs(index)) == 2  # dead: nothing deferred
        assert queue.retry(job.id, 400.0)
        assert len(procrastinate_jobs(index)) == 3 and procrastinate_counts(index) == {"todo": 3}
    finally:
        index.close()


def test_the_attempt_number_fences_a_result_of_a_worker_taken_for_dead(make_config: Callable[..., NodeConfig],
                                                                        tmp_path: Path, pg_url: str) -> None:
    """Worker A starts the job, goes silent; procrastinate hands it to worker B (attempt 2).
    A's late result is refused and its transaction leaves nothing; B's commits. A job whose
    workers die on every attempt ends dead."""
    config = engine_config(make_config, tmp_path, pg_url, "cpu", max_attempts=2)
    index = Index(pg_url)
    try:
        queue = job_queue(index, config)
        with index.transaction() as db:
            JobQueue.add(db, new_job(), 100.0, 2, queue.dispatch)
        job_id = queue.list()[0]["id"]
        first = queue.start(job_id, "host-a:1", 100.0, 60)
        second = queue.start(job_id, "host-b:1", 150.0, 60)
        assert first is not None and second is not None and (first.attempts, second.attempts) == (1, 2)
        assert "worker host-a:1 stopped" in second.last_error
        with pytest.raises(LeaseLost):
            queue.heartbeat(job_id, "host-a:1", 160.0, 60, attempt=1)
        outbox = Outbox(index)
        with pytest.raises(LeaseLost), index.transaction() as db:
            Outbox.add(db, job_id, "ct:1.2.3:v1", "seg", "pacs", [Candidate("binary", "/r/seg.dcm", "1.2", "1.2", "9.9")],
                       170.0)
            JobQueue.mark_done(db, job_id, "host-a:1", 170.0, "cpu", attempt=1)
        assert outbox.list() == []
        with index.transaction() as db:
            JobQueue.mark_done(db, job_id, "host-b:1", 180.0, "cpu", attempt=2)
        assert queue.get(job_id).state is JobState.DONE  # type: ignore[union-attr]
        assert queue.start(job_id, "host-c:1", 190.0, 60) is None  # a duplicate hand-out finds nothing to do

        with index.transaction() as db:
            JobQueue.add(db, new_job("ct:1.2.3:v2"), 200.0, 2, queue.dispatch)
        other = queue.list()[0]["id"]
        assert queue.start(other, "a", 200.0, 60) is not None and queue.start(other, "b", 210.0, 60) is not None
        assert queue.start(other, "c", 220.0, 60) is None  # both workers died on it: dead, not a third try
        dead = queue.get(other)
        assert dead is not None and dead.state is JobState.DEAD and "every attempt" in dead.last_error
    finally:
        index.close()


def test_a_stalled_procrastinate_worker_s_job_runs_again_elsewhere(make_config: Callable[..., NodeConfig],
                                                                   tmp_path: Path, pg_url: str,
                                                                   series: list[Path]) -> None:
    """A procrastinate job left 'doing' by a worker whose heartbeat stopped (its host died
    without unregistering) is handed out again by a live worker's sweep and finishes once."""
    config = engine_config(make_config, tmp_path, pg_url, "cpu")
    worker = Worker(config, owner="host-b:1")
    try:
        index_series(worker.index, series)
        [job] = route_completed(worker.index, config, now=1000)
        job_id = worker.jobs.list()[0]["id"]
        # What a dead host leaves: its worker row with an old heartbeat, the job 'doing' under it,
        # the jobs row running at attempt 1.
        with worker.index.transaction() as db:
            dead = db.execute("INSERT INTO procrastinate_workers(last_heartbeat) VALUES(now() - interval '1 hour') "
                              "RETURNING id").fetchone()[0]
            db.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = ? WHERE task_name = ?",
                       (dead, TASK_NAME))
        assert worker.jobs.start(job_id, "host-a:1", 1000.0, 60) is not None
        stop = threading.Event()
        runner = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        runner.start()
        try:
            deadline = 60
            while worker.jobs.get(job_id).state is not JobState.DONE and deadline > 0:  # type: ignore[union-attr]
                stop.wait(0.5)
                deadline -= 0.5
        finally:
            stop.set()
            runner.join(30)
        done = worker.jobs.get(job_id)
        assert done is not None and (done.state, done.attempts) == (JobState.DONE, 2)
        assert not runner.is_alive()
        assert procrastinate_counts(worker.index) == {}  # done and deleted: nothing left to hand out
    finally:
        worker.close()


def test_serve_says_which_routes_jobs_no_worker_here_takes(tmp_path: Path) -> None:
    """A route whose pipeline wants CUDA on a machine whose workers take only the default queue:
    serve names the route and the queue at start instead of leaving its jobs waiting unexplained."""
    import subprocess
    import sys

    import yaml

    from ..conftest import config_dict
    from ..support.peers import free_port, stop_process, wait_for

    data = config_dict(tmp_path, node={"port": free_port()}, peers=PEERS, pipelines=PIPELINES,
                       routes=[{"name": "ct-gpu", "match": {"modality": "CT"}, "pipeline": "gpu-only",
                                "destinations": ["pacs"]},
                               {"name": "mr", "match": {"modality": "MR"}, "pipeline": "cpu", "destinations": ["pacs"]}],
                       results={"path": str(tmp_path / "results")}, jobs={"workers": 1, "queues": ["default"]})
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(path), "serve"], stdout=out,
                                stderr=subprocess.STDOUT)
    processes.watch(proc, log=log, name="dicom-node serve")
    try:
        line = wait_for(lambda: next((x for x in log.read_text().splitlines() if "no worker here takes" in x), None), 60,
                        "the warning")
        assert "ct-gpu" in line and "'gpu'" in line and "mr" not in line.split("go to")[0]
    finally:
        stop_process(proc, 30)
