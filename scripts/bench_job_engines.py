#!/usr/bin/env python3
"""Job engines side by side: what claiming and finishing a job costs, before the node runs on
one (issue "Beyond one machine": choose the engine by measurement).

Engines, each on a job that does no work (so the engine's own overhead is what shows):

  sqlite         the node's embedded queue today: dicom_node.flow.jobs.JobQueue on the SQLite index
                 (lease claim in a write transaction, done in another), workers polling every
                 ``--poll`` seconds as ``jobs.poll_seconds`` does
  pg-skip-locked the same two statements on PostgreSQL: ``UPDATE ... WHERE id = (SELECT ... FOR
                 UPDATE SKIP LOCKED LIMIT 1)``, then done; idle workers wait on LISTEN/NOTIFY
  procrastinate  procrastinate 3 (PostgreSQL, LISTEN/NOTIFY) with its sync defer and its worker,
                 concurrency 1 per process
  node           the node on procrastinate as it runs (dicom_node/flow/job_engine.py): jobs rows
                 deferred in the transaction that queues them, run_procrastinate_worker starting
                 each row at its next attempt and committing its end fenced by that attempt

For each: jobs per second draining ``--jobs`` queued jobs with 1, 2 and 4 worker processes, and
the claim latency (enqueue to the job starting) of ``--latency-jobs`` jobs sent one at a time to
one idle worker (median and 95th percentile). PostgreSQL is a throwaway cluster this script
starts on loopback (dicom_node/tools/postgres_local.py) and stops.

    .venv/bin/python scripts/bench_job_engines.py [--jobs 2000] [--workers 1 2 4] [--engines sqlite pg-skip-locked procrastinate node]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUEUE_DDL = """
CREATE TABLE IF NOT EXISTS bench_jobs (id BIGSERIAL PRIMARY KEY, state TEXT NOT NULL DEFAULT 'queued',
    owner TEXT, enqueued_at DOUBLE PRECISION NOT NULL, started_at DOUBLE PRECISION, done_at DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS bench_jobs_queued ON bench_jobs(id) WHERE state = 'queued';
"""
CLAIM = ("UPDATE bench_jobs SET state = 'running', owner = %s, started_at = %s WHERE id = (SELECT id FROM bench_jobs "
         "WHERE state = 'queued' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id, enqueued_at")


# -- procrastinate: the app and its task live at module level so workers can import them -------

def procrastinate_app(url: str):  # type: ignore[no-untyped-def]
    import logging

    import procrastinate

    # It warns that the app lives in __main__ (workers import it from this script by path: fine here).
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="bench", queue="bench")
    def bench(enqueued_at: float, out: str = "") -> None:
        if out:
            with open(out, "a") as fh:
                fh.write(f"{time.time() - enqueued_at}\n")

    return app, bench


# -- workers (run as subprocesses of this script) --------------------------------------------------

def worker_sqlite(index_path: str, poll: float, drain: bool, out: str) -> None:
    from dicom_node.flow.jobs import JobQueue
    from dicom_node.storage.index import Index

    queue = JobQueue(Index(Path(index_path)))
    owner = f"w{os.getpid()}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = queue.claim(owner, time.time(), 60)
        if job is None:
            if drain:
                return
            time.sleep(poll)
            continue
        if out:
            created = queue.index.query("SELECT created_at FROM jobs WHERE id = ?", (job.id,))[0]["created_at"]
            with open(out, "a") as fh:
                fh.write(f"{time.time() - created}\n")
        with queue.index.transaction() as db:
            JobQueue.mark_done(db, job.id, owner, time.time())


def worker_pg(url: str, drain: bool, out: str) -> None:
    import psycopg

    owner = f"w{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN bench_jobs")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = conn.execute(CLAIM, (owner, time.time())).fetchone()
            if row is None:
                if drain:
                    return
                for _ in listener.notifies(timeout=1.0, stop_after=1):
                    pass
                continue
            if out:
                with open(out, "a") as fh:
                    fh.write(f"{time.time() - row[1]}\n")
            conn.execute("UPDATE bench_jobs SET state = 'done', done_at = %s WHERE id = %s", (time.time(), row[0]))


def worker_procrastinate(url: str, drain: bool) -> None:
    app, _ = procrastinate_app(url)
    app.run_worker(queues=["bench"], wait=not drain, concurrency=1, install_signal_handlers=not drain,
                   delete_jobs="never")


def node_config(url: str, work: Path):  # type: ignore[no-untyped-def]
    from dicom_node.config import parse_config

    return parse_config({"index": {"url": url, "path": str(work / "local" / "index.sqlite")},
                         "storage": {"path": str(work / "storage")}, "jobs": {"poll_seconds": 0.2}}, "bench")


class NoWorkWorker:
    """The node's worker as run_procrastinate_worker drives it, with an analysis that does
    nothing: the job's end is committed at its attempt (the fence) and nothing else happens."""

    def __init__(self, url: str, work: Path, out: str) -> None:
        from dicom_node.flow.job_engine import job_queue
        from dicom_node.storage.index import Index

        self.config = node_config(url, work)
        self.index = Index(url)
        self.jobs = job_queue(self.index, self.config)
        self.owner = f"w{os.getpid()}"
        self.clock = time.time
        self.out = out

    def run_job(self, job) -> bool:  # type: ignore[no-untyped-def]
        from dicom_node.flow.jobs import JobQueue

        if self.out:
            created = self.index.query("SELECT created_at FROM jobs WHERE id = ?", (job.id,))[0]["created_at"]
            with open(self.out, "a") as fh:
                fh.write(f"{time.time() - created}\n")
        with self.index.transaction() as db:
            JobQueue.mark_done(db, job.id, self.owner, time.time(), "none", attempt=job.attempts)
        return True


def worker_node(url: str, work: str, drain: bool, out: str) -> None:
    import threading

    from dicom_node.flow.job_engine import run_procrastinate_worker

    worker = NoWorkWorker(url, Path(work), out)
    run_procrastinate_worker(worker, threading.Event(), ["default"], burst=drain)  # type: ignore[arg-type]


def add_node_jobs(url: str, work: Path, first: int, count: int, reset: bool) -> None:
    """Queue ``count`` jobs as routing does (rows deferred in the same transaction)."""
    from dicom_node.flow.job_engine import job_queue
    from dicom_node.flow.jobs import JobQueue, NewJob
    from dicom_node.storage.index import Index

    index = Index(url)
    try:
        queue = job_queue(index, node_config(url, work))
        with index.transaction() as db:
            if reset:
                for table in ("procrastinate_events", "procrastinate_jobs", "jobs"):
                    db.execute(f"DELETE FROM {table}")
            now = time.time()
            for n in range(first, first + count):
                JobQueue.add(db, NewJob(f"bench:{n}", "bench", "none", f"1.2.{n}", "1.2", 1, "X", (), "routine"), now, 3,
                             queue.dispatch)
    finally:
        index.close()


# -- the parent: set up, start workers, time -------------------------------------------------------

def spawn(role: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--role", role, *args], start_new_session=True)


def fill(engine: str, count: int, work: Path, url: str) -> str:
    """Queue ``count`` jobs; return the worker arguments for this engine."""
    now = time.time()
    if engine == "node":
        add_node_jobs(url, work, 0, count, reset=True)
        return url
    if engine == "sqlite":
        from dicom_node.flow.jobs import JobQueue, NewJob
        from dicom_node.storage.index import Index

        path = work / f"index-{time.monotonic_ns()}.sqlite"
        index = Index(path)
        JobQueue(index)
        with index.transaction() as db:
            for n in range(count):
                JobQueue.add(db, NewJob(f"bench:{n}", "bench", "none", f"1.2.{n}", "1.2", 1, "X", (), "routine"), now, 3)
        index.close()
        return str(path)
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if engine == "pg-skip-locked":
            conn.execute("DROP TABLE IF EXISTS bench_jobs")
            conn.execute(QUEUE_DDL)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO bench_jobs(enqueued_at) VALUES (%s)", [(now,)] * count)
        else:
            conn.execute("DELETE FROM procrastinate_events")
            conn.execute("DELETE FROM procrastinate_jobs")
    if engine == "procrastinate":
        app, bench = procrastinate_app(url)
        with app.open():
            bench.batch_defer(*[{"enqueued_at": now}] * count)
    return url


def throughput(engine: str, count: int, workers: int, work: Path, url: str, poll: float) -> float:
    """Jobs per second between the first and the last job finishing (the workers' start-up,
    a Python import, is not the engine's cost), every job checked finished."""
    target = fill(engine, count, work, url)
    args = [target, str(poll)] if engine == "sqlite" else [target, str(work)] if engine == "node" else [target]
    procs = [spawn(engine, *args, "--drain") for _ in range(workers)]
    for proc in procs:
        proc.wait(timeout=300)
    if engine in ("sqlite", "node"):
        from dicom_node.storage.index import Index

        index = Index(Path(target) if engine == "sqlite" else target)
        first, last, finished = index.query("SELECT min(finished_at), max(finished_at), count(*) FROM jobs "
                                            "WHERE state = 'done'")[0]
        index.close()
    else:
        import psycopg

        query = ("SELECT min(done_at), max(done_at), count(*) FROM bench_jobs WHERE state = 'done'"
                 if engine == "pg-skip-locked" else
                 "SELECT extract(epoch FROM min(at)), extract(epoch FROM max(at)), count(*) FROM procrastinate_events "
                 "WHERE type = 'succeeded'")
        with psycopg.connect(url) as conn:
            first, last, finished = conn.execute(query).fetchone()
    assert finished == count, f"{engine}: {finished} of {count} jobs finished"
    return (count - 1) / (float(last) - float(first))


def latency(engine: str, jobs: int, work: Path, url: str, poll: float) -> list[float]:
    target = fill(engine, 0, work, url)
    out = work / f"latency-{engine}-{time.monotonic_ns()}.txt"
    args = [target, str(poll)] if engine == "sqlite" else [target, str(work)] if engine == "node" else [target]
    proc = spawn(engine, *args, "--out", str(out))
    try:
        time.sleep(2.0)  # the worker is up and idle
        for n in range(jobs):
            now = time.time()
            if engine == "node":
                add_node_jobs(url, work, 100_000 + n, 1, reset=False)
            elif engine == "sqlite":
                from dicom_node.flow.jobs import JobQueue, NewJob
                from dicom_node.storage.index import Index

                index = Index(Path(target))
                with index.transaction() as db:
                    JobQueue.add(db, NewJob(f"lat:{n}", "bench", "none", f"9.{n}", "9", 1, "X", (), "routine"), now, 3)
                index.close()
            elif engine == "pg-skip-locked":
                import psycopg

                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("INSERT INTO bench_jobs(enqueued_at) VALUES (%s)", (now,))
                    conn.execute("NOTIFY bench_jobs")
            else:
                app, bench = procrastinate_app(url)
                with app.open():
                    bench.defer(enqueued_at=now, out=str(out))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) <= n):
                time.sleep(0.005)
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return [float(x) for x in out.read_text().split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="")
    parser.add_argument("--drain", action="store_true")
    parser.add_argument("--out", default="")
    parser.add_argument("target", nargs="*")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency-jobs", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--poll", type=float, default=1.0, help="the sqlite workers' poll interval (jobs.poll_seconds)")
    parser.add_argument("--engines", nargs="*", default=["sqlite", "pg-skip-locked", "procrastinate", "node"])
    args = parser.parse_args()
    if args.role == "sqlite":
        worker_sqlite(args.target[0], float(args.target[1]), args.drain, args.out)
        return 0
    if args.role == "pg-skip-locked":
        worker_pg(args.target[0], args.drain, args.out)
        return 0
    if args.role == "procrastinate":
        worker_procrastinate(args.target[0], args.drain)
        return 0
    if args.role == "node":
        worker_node(args.target[0], args.target[1], args.drain, args.out)
        return 0

    from dicom_node.tools.postgres_local import start_postgres

    server = start_postgres()
    try:
        if "procrastinate" in args.engines:
            app, _ = procrastinate_app(server.url)
            with app.open():
                app.schema_manager.apply_schema()
        results: dict[str, dict[str, object]] = {}
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            for engine in args.engines:
                rates = {w: throughput(engine, args.jobs, w, work, server.url, args.poll) for w in args.workers}
                waits = sorted(latency(engine, args.latency_jobs, work, server.url, args.poll))
                results[engine] = {"jobs_per_s": rates, "latency_ms": {
                    "median": statistics.median(waits) * 1000, "p95": waits[int(0.95 * (len(waits) - 1))] * 1000}}
                print(f"{engine:15s} " + "  ".join(f"{w} worker(s): {r:7.0f} jobs/s" for w, r in rates.items())
                      + f"  claim latency median {results[engine]['latency_ms']['median']:.1f} ms, "
                        f"p95 {results[engine]['latency_ms']['p95']:.1f} ms", flush=True)
        print(json.dumps(results))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
