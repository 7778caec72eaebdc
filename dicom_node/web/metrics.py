"""Prometheus exposition for /metrics: the counts every process keeps (counters.py) added up,
and what the index says at scrape time.

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

from prometheus_client.core import GaugeMetricFamily

from .. import counters  # noqa: F401  (registers the counts in this process's registry too)
from ..config import is_postgres_url
from ..metrics_folder import ENV


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
                from ..storage.index_postgres import DatabaseError, PgConnection

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
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

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
