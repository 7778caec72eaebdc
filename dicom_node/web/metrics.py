"""Prometheus metrics: what the listener, the workers and the sender count as they go, and what
the index says at scrape time.

The node runs as several processes (listener processes behind the port, analysis workers, the
supervising process with the sender), so counters live in prometheus_client's multiprocess
mode: each process writes its values to files in one folder (``PROMETHEUS_MULTIPROC_DIR``, set
by ``serve`` before any of them starts: metrics_folder.use_folder) and the web service adds them up
when scraped. A node run in one process (tests, the demo) keeps them in memory.

Gauges that are a fact of the index (queue depth, deliveries waiting) or the disk (free
space) are read when scraped (:class:`StateCollector`), not kept up to date by every writer.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from .config import is_postgres_url
from .metrics_folder import ENV

INSTANCES_RECEIVED = Counter("dicom_node_instances_received", "Instances stored and acknowledged, per calling AE title",
                             ["calling_ae"])
BYTES_RECEIVED = Counter("dicom_node_bytes_received", "Bytes of instances stored and acknowledged, per calling AE title",
                         ["calling_ae"])
INSTANCES_REFUSED = Counter("dicom_node_instances_refused", "C-STORE requests answered with a failure status",
                            ["calling_ae", "status"])
ASSOCIATIONS = Counter("dicom_node_associations", "Associations by how they ended (released, aborted, rejected)",
                       ["outcome"])
CSTORE_SECONDS = Histogram("dicom_node_cstore_seconds",
                           "From a C-STORE request's dataset received to its response: the durable store and index",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
JOB_STAGE_SECONDS = Histogram("dicom_node_job_stage_seconds", "Analysis job time per pipeline stage",
                              ["pipeline", "stage"],
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000))
JOBS_FINISHED = Counter("dicom_node_jobs_finished", "Analysis jobs by outcome", ["pipeline", "outcome"])
DELIVERIES = Counter("dicom_node_deliveries", "Objects delivered (results and forwards), per peer", ["peer"])
DELIVERY_FAILURES = Counter("dicom_node_delivery_failures", "Failed delivery attempts, per peer", ["peer"])


class StateCollector:
    """Gauges read from the index and the disk when scraped."""

    def __init__(self, index_path: Path | str, storage_path: Path) -> None:
        self.index_path = index_path
        self.storage_path = storage_path

    def describe(self) -> list[Any]:
        return []  # collected lazily: the registry must not scrape at registration

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("dicom_node_jobs", "Analysis jobs in the queue by state", labels=["state"])
        deliveries = GaugeMetricFamily("dicom_node_deliveries_queued", "Deliveries by state", labels=["state"])
        studies = GaugeMetricFamily("dicom_node_series", "Series in the index by state", labels=["state"])
        postgres = is_postgres_url(self.index_path)
        try:
            if postgres:
                from .index_postgres import DatabaseError, PgConnection

                db: Any = PgConnection(str(self.index_path))
                errors: tuple[type[BaseException], ...] = (DatabaseError,)
            else:
                db = sqlite3.connect(f"file:{self.index_path}?mode=ro", uri=True, timeout=1)
                errors = (sqlite3.Error,)
            try:
                for table, family in (("jobs", jobs), ("deliveries", deliveries), ("series", studies)):
                    try:
                        for state, count in db.execute(f"SELECT state, count(*) FROM {table} GROUP BY state"):
                            family.add_metric([state], count)
                    except errors:
                        pass  # a table a later stage creates, not there yet
            finally:
                db.close()
        except Exception:  # noqa: BLE001 - a scrape never fails on the index: the gauges are left out
            pass
        yield from (jobs, deliveries, studies)
        disk = GaugeMetricFamily("dicom_node_disk_free_bytes", "Free space where instances are stored", labels=["path"])
        try:
            disk.add_metric([str(self.storage_path)], shutil.disk_usage(self.storage_path).free)
        except OSError:
            pass
        yield disk


def exposition(index_path: Path | str, storage_path: Path) -> tuple[bytes, str]:
    """The text a Prometheus scrape gets: every process's counters plus the state gauges."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client import multiprocess

    if os.environ.get(ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    registry.register(StateCollector(index_path, storage_path))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Forward:
    """The in-process registry's metrics inside another registry (one process, no files)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        yield from self.registry.collect()
