"""Which engine hands jobs to workers, and the queues that keep GPU pipelines on GPU workers.

Two engines over the same jobs table (jobs.py, the record of every job):

- ``lease`` (the embedded default, one machine, SQLite): workers claim rows themselves and hold
  them with a lease they renew; a lease that runs out makes the job claimable again.
- ``procrastinate`` (PostgreSQL, several hosts): the procrastinate job engine. A job is deferred
  as a procrastinate job *in the transaction that routes its series* (its SQL function
  ``procrastinate_defer_jobs_v1`` on the index's own connection: a rollback takes both back);
  procrastinate's workers fetch it with ``FOR UPDATE SKIP LOCKED``, wake on LISTEN/NOTIFY,
  renew a heartbeat per worker process, and a worker whose heartbeat stops (its host died) has
  its job handed out again by the stalled-job sweep every worker runs. The task starts the job
  row (``JobQueue.start``: the next attempt, the fencing token) and the node's worker runs it,
  committing its result only while the row is still at that attempt.

Why procrastinate (scripts/bench_job_engines.py, 2 cores, docs/deploy/README.md): it needs
nothing beside the PostgreSQL the index already is (no broker to run, back up or fail over),
its enqueue joins our transaction (a broker's cannot), and it claims 330-540 jobs/s with a
~19 ms claim latency here: four orders of magnitude over a 20-hospital network's 1.4 jobs/s at
the peak hour. Celery with Redis would re-deliver a dead host's task only after its visibility
timeout (an hour by default); with RabbitMQ it needs a broker beside the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..config import NodeConfig
from ..errors import JobNotSettled, NodeError
from ..storage.index import Index
from .jobs import DEFAULT_QUEUE, Job, JobQueue


class JobRunner(Protocol):
    """What the procrastinate engine needs of a worker (worker.Worker is one): it starts the job
    row itself, then hands the job over to run."""

    config: NodeConfig
    jobs: JobQueue
    owner: str
    clock: Callable[[], float]

    def run_job(self, job: Job) -> bool: ...


log = logging.getLogger(__name__)

#: The procrastinate task every analysis job runs as; its only argument is the jobs row id.
TASK_NAME = "dicom_node.analyse"
GPU_QUEUE = "gpu"

#: Whether a database holds procrastinate's schema (one row, column ``present``).
_SCHEMA_PRESENT = "SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS present"
_DEFER = ("SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(?, ?, ?, NULL, NULL, ?::jsonb, to_timestamp(?))]"
          "::procrastinate_job_to_defer_v1[])")


# -- queues ----------------------------------------------------------------------------------

def queue_for(config: NodeConfig, pipeline_names: Sequence[str]) -> str:
    """The queue of a job that tries ``pipeline_names`` in order: the first pipeline's own
    ``queue:``, or ``gpu`` when one of them wants CUDA, else ``default``. A job whose pipelines
    disagree goes where the most demanding one can run."""
    for name in pipeline_names:
        spec = config.pipelines.get(name)
        if spec is None:
            continue
        if spec.queue:
            return spec.queue
        if spec.device.startswith("cuda"):
            return GPU_QUEUE
    return DEFAULT_QUEUE


def gpu_present() -> bool:
    """Whether torch sees a CUDA device on this machine (False when torch cannot tell)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA install means no GPU for this worker
        return False


def worker_environment(config: NodeConfig) -> tuple[list[str], bool]:
    """What stops a configured pipeline from running here (pipelines.build.pipeline_problems),
    and whether torch sees a GPU: what a worker process would find. Both load torch, so the
    supervisor asks them of a process started for the purpose (cli serve)."""
    from ..pipelines.build import pipeline_problems

    return pipeline_problems(config), gpu_present()


def worker_queues(config: NodeConfig, override: Sequence[str] | None = None,
                  has_gpu: Callable[[], bool] = gpu_present) -> list[str]:
    """The queues this machine's workers take: ``override`` (``--queues``), ``jobs.queues``, or
    ``gpu`` and ``default`` where there is a GPU, ``default`` alone where there is none."""
    if override:
        return list(override)
    if config.jobs.queues:
        return list(config.jobs.queues)
    return [GPU_QUEUE, DEFAULT_QUEUE] if has_gpu() else [DEFAULT_QUEUE]


def unserved_queues(config: NodeConfig, queues: Sequence[str]) -> dict[str, list[str]]:
    """Queues some route's jobs go to that ``queues`` leave to other machines: queue -> routes."""
    unserved: dict[str, list[str]] = {}
    for route in config.routes:
        if route.pipeline_names:
            queue = queue_for(config, route.pipeline_names)
            if queue not in queues:
                unserved.setdefault(queue, []).append(route.name)
    return unserved


# -- procrastinate ---------------------------------------------------------------------------

class ProcrastinateDispatch:
    """Defers a jobs row to procrastinate on the caller's transaction (jobs.Dispatch)."""

    def __init__(self) -> None:
        self._schema_seen: set[str] = set()  # databases known to hold procrastinate's schema

    def defer(self, db: Any, job_id: int, queue: str, priority: int, not_before: float | None) -> None:
        url = getattr(db, "url", "")
        # In this transaction: a process may route before any worker installed it. Remembered
        # only once seen committed (this transaction may still roll back).
        if url not in self._schema_seen and _install_schema(db):
            self._schema_seen.add(url)
        db.execute(_DEFER, (queue, TASK_NAME, priority, json.dumps({"job_id": job_id}), not_before))


_PROCRASTINATE = ProcrastinateDispatch()  # one per process: it remembers where the schema is


def dispatch_for(config: NodeConfig) -> ProcrastinateDispatch | None:
    """What must hear of queued jobs under ``config`` (None: the lease engine finds them itself)."""
    return _PROCRASTINATE if config.job_engine == "procrastinate" else None


def job_queue(index: Index, config: NodeConfig) -> JobQueue:
    """The job queue as ``config`` runs it (attempts, backoff, engine), its tables made."""
    queue = JobQueue(index, config.jobs.max_attempts, config.jobs.retry_base_seconds, dispatch_for(config))
    if queue.dispatch is not None:
        ensure_procrastinate_schema(index)
    return queue


def ensure_procrastinate_schema(index: Index) -> None:
    """Install procrastinate's schema into the index database once (under the index's write
    lock, so processes starting together install it once). Upgrades follow procrastinate's own
    migration files (docs/deploy/README.md)."""
    if index.query(_SCHEMA_PRESENT)[0]["present"]:
        return
    with index.transaction() as db:
        _install_schema(db)


def _install_schema(db: Any) -> bool:
    """procrastinate's schema, inside the caller's write transaction (which holds the index's
    write lock, so two processes never install it twice), unless it is there. True when it was."""
    from procrastinate.schema import SchemaManager

    if db.execute(_SCHEMA_PRESENT).fetchone()["present"]:
        return True
    db.execute_script(SchemaManager.get_schema())
    log.info("Installed the procrastinate job engine's schema in the index database")
    return False


def _app(url: str) -> Any:
    import procrastinate

    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=3))


def run_procrastinate_worker(worker: JobRunner, stop: threading.Event | Any, queues: Sequence[str],
                             burst: bool = False) -> int:
    """Run ``worker``'s jobs as procrastinate hands them out on ``queues`` until ``stop`` is set
    (``burst``: until the queues are empty). A worker that loses the database (PostgreSQL
    restarted) starts again once it can reach it. Returns the number of jobs finished."""
    import procrastinate

    config = worker.config
    url = str(config.index.url)
    stalled = config.jobs.stalled_seconds
    finished = 0
    logging.getLogger("procrastinate").setLevel(logging.WARNING)

    def analyse(job_id: int) -> None:
        nonlocal finished
        job = worker.jobs.start(job_id, worker.owner, worker.clock(), config.jobs.lease_seconds)
        if job is None:
            log.info("Job %d has nothing left to run (finished or dead)", job_id)
            return
        finished += worker.run_job(job)
        if _unsettled(worker.jobs, job):
            raise JobNotSettled(f"job {job_id} attempt {job.attempts}: its end was not recorded")

    async def sweep(app: Any) -> None:
        """Hand the jobs of workers that stopped renewing their heartbeat out again."""
        while True:
            await asyncio.sleep(stalled / 2)
            for stale in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=stalled, task_name=TASK_NAME):
                try:
                    await app.job_manager.retry_job(stale)
                    log.warning("Job %s: its worker stopped renewing its heartbeat for %.0f s; handed out again",
                                stale.task_kwargs.get("job_id"), stalled)
                except Exception as exc:  # noqa: BLE001 - another worker's sweep took it first
                    log.debug("Stalled job %s not retried here: %s", stale.id, exc)

    async def once() -> None:
        app = _app(url)
        app.task(name=TASK_NAME, pass_context=False,
                 retry=procrastinate.RetryStrategy(max_attempts=20, wait=5))(analyse)
        async with app.open_async():
            run = asyncio.create_task(app.run_worker_async(
                queues=list(queues), concurrency=1, wait=not burst, install_signal_handlers=False,
                name=worker.owner, update_heartbeat_interval=stalled / 3, stalled_worker_timeout=stalled,
                fetch_job_polling_interval=config.jobs.poll_seconds * 5, listen_notify=True,
                delete_jobs="successful"))
            sweeper = asyncio.create_task(sweep(app))
            try:
                while not run.done() and not stop.is_set():
                    await asyncio.wait({run}, timeout=0.2)
            finally:
                sweeper.cancel()
                if not run.done():
                    run.cancel()  # procrastinate lets the running job finish, then unregisters
                await asyncio.gather(run, sweeper, return_exceptions=True)
            if not run.cancelled():
                run.result()  # a worker that stopped on an error raises it here

    while not stop.is_set():
        try:
            asyncio.run(once())
            if burst:
                break
        except Exception as exc:  # noqa: BLE001 - the database went away: start again when it is back
            log.error("The procrastinate worker stopped (%s: %s); starting again", type(exc).__name__, exc)
            stop.wait(config.jobs.poll_seconds * 5)
            continue
        if not stop.is_set():
            log.warning("The procrastinate worker stopped by itself; starting again")
            stop.wait(config.jobs.poll_seconds)
    return finished


def _unsettled(queue: JobQueue, job: Job) -> bool:
    """Whether ``job`` is still running at its attempt after its worker returned."""
    try:
        current = queue.get(job.id)
    except NodeError:
        return True
    return current is not None and current.state.value == "running" and current.attempts == job.attempts \
        and current.lease_owner == job.lease_owner


def procrastinate_counts(index: Index) -> dict[str, int]:
    """procrastinate's jobs by status (for ``status`` and tests); {} on the lease engine."""
    if index.dialect != "postgresql":
        return {}
    if not index.query(_SCHEMA_PRESENT)[0]["present"]:
        return {}
    return {r["status"]: r["n"] for r in index.query(
        "SELECT status::text AS status, count(*) AS n FROM procrastinate_jobs WHERE task_name = ? GROUP BY status",
        (TASK_NAME,))}


__all__ = ["GPU_QUEUE", "TASK_NAME", "ProcrastinateDispatch", "dispatch_for", "ensure_procrastinate_schema",
           "job_queue", "procrastinate_counts", "queue_for", "run_procrastinate_worker", "unserved_queues", "worker_queues"]
