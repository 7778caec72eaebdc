"""The index schema's migrations (dicom_node/storage/schema.py, dicom_node/storage/migrations): a fresh index at
the head revision on both backends, an index from before migrations adopted with its rows, a
newer index refused, processes opening one index at once upgrading it once, a downgrade and
upgrade again, and ``dicom-node migrate``."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicom_node.errors import IndexError_
from dicom_node.storage import schema
from dicom_node.storage.index import Index

from ..conftest import config_dict, new_postgres_database
from ..support import processes

TABLES = {"meta", "studies", "series", "instances", "study_routes", "receipts", "jobs", "deliveries", "pseudonyms"}

#: An index as the release before routing wrote it (SQLite): series and studies without their
#: routing columns, jobs without ran_pipeline and queue, one row in each.
BEFORE_MIGRATIONS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE studies (study_uid TEXT PRIMARY KEY, patient_id TEXT NOT NULL DEFAULT '', patient_name TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '', study_description TEXT NOT NULL DEFAULT '', accession_number TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 1, first_received_at REAL NOT NULL, last_received_at REAL NOT NULL,
    completed_at REAL);
CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    modality TEXT NOT NULL DEFAULT '', body_part_examined TEXT NOT NULL DEFAULT '', series_description TEXT NOT NULL DEFAULT '',
    series_number INTEGER, calling_ae TEXT NOT NULL DEFAULT '', state TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 1,
    instance_count INTEGER NOT NULL DEFAULT 0, first_received_at REAL NOT NULL, last_received_at REAL NOT NULL,
    completed_at REAL);
CREATE TABLE jobs (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, route TEXT NOT NULL, pipeline TEXT NOT NULL,
    series_uid TEXT NOT NULL, study_uid TEXT NOT NULL, series_version INTEGER NOT NULL, calling_ae TEXT NOT NULL DEFAULT '',
    destinations TEXT NOT NULL, priority INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL, not_before REAL NOT NULL, lease_owner TEXT, lease_expires REAL,
    last_error TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL);
INSERT INTO studies(study_uid, state, version, first_received_at, last_received_at) VALUES('1.2', 'complete', 2, 10, 20);
INSERT INTO series(series_uid, study_uid, modality, state, version, instance_count, first_received_at, last_received_at)
    VALUES('1.2.3', '1.2', 'CT', 'complete', 2, 40, 10, 20);
INSERT INTO jobs(key, route, pipeline, series_uid, study_uid, series_version, destinations, priority, state, attempts,
    max_attempts, not_before, created_at, updated_at) VALUES('ct:1.2.3:v2', 'ct', 'p', '1.2.3', '1.2', 2, '["pacs"]', 0,
    'queued', 0, 3, 0, 20, 20);
"""


def tables(index: Index) -> set[str]:
    sql = "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()" if index.dialect == "postgresql" \
        else "SELECT name FROM sqlite_master WHERE type = 'table'"
    return {r["name"] for r in index.query(sql)}


def test_head_is_the_newest_migration_file() -> None:
    assert schema.alembic_head() == schema.HEAD
    assert schema.revisions()[-1] == schema.HEAD and schema.revisions()[0] == "0001"


def test_a_fresh_index_is_made_by_the_migrations(open_index: Callable[[str], Index]) -> None:
    index = open_index("fresh.sqlite")
    assert TABLES | {"alembic_version"} <= tables(index)
    assert [r["version_num"] for r in index.query("SELECT version_num FROM alembic_version")] == [schema.HEAD]
    assert schema.revision_at(index.path) == schema.HEAD
    again = Index(index.path)  # at the head already: nothing to do
    again.close()


def test_an_index_from_before_migrations_is_adopted_with_its_rows(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(BEFORE_MIGRATIONS)
    old.close()
    assert schema.revision_at(path) is None
    index = Index(path)
    try:
        assert TABLES <= tables(index)
        [study] = index.query("SELECT routed_version, version_started_at FROM studies")
        assert (study["routed_version"], study["version_started_at"]) == (2, 10)  # its versions count as routed
        [series] = index.query("SELECT routed_version, instance_count FROM series")
        assert (series["routed_version"], series["instance_count"]) == (0, 40)
        [job] = index.query("SELECT key, state, ran_pipeline, queue FROM jobs")
        assert tuple(job) == ("ct:1.2.3:v2", "queued", "", "default")
        assert schema.revision_at(path) == schema.HEAD
    finally:
        index.close()


def test_an_index_newer_than_this_release_is_refused(open_index: Callable[[str], Index]) -> None:
    index = open_index("newer.sqlite")
    with index.transaction() as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(IndexError_, match="schema revision 9999, newer than this release knows"):
        Index(index.path)


def test_a_downgrade_and_the_upgrade_again(open_index: Callable[[str], Index]) -> None:
    """``migrate --to 0001`` (a release's rollback) drops what 0002 added; the upgrade restores
    it, with the jobs that were there."""
    index = open_index("down.sqlite")
    with index.transaction() as db:
        db.execute("INSERT INTO jobs(key, route, pipeline, series_uid, study_uid, series_version, destinations, priority, "
                   "state, max_attempts, not_before, created_at, updated_at, queue) "
                   "VALUES('k', 'r', 'p', 's', 't', 1, '[]', 0, 'queued', 3, 0, 0, 0, 'gpu')")
    index.close()
    schema.downgrade(index.path, "0001")
    assert schema.revision_at(index.path) == "0001"
    schema.upgrade(index.path)
    again = Index(index.path)
    try:
        assert [tuple(r) for r in again.query("SELECT key, queue FROM jobs")] == [("k", "default")]
    finally:
        again.close()


OPEN_ONE = """
import sys
from dicom_node.storage.index import Index
Index(sys.argv[1]).close()
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_opening_one_fresh_index_at_once_upgrade_it_once(tmp_path: Path, backend: str,
                                                                   request: pytest.FixtureRequest) -> None:
    location = str(tmp_path / "shared.sqlite") if backend == "sqlite" else \
        new_postgres_database(request.getfixturevalue("postgres_server"))
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_ONE, location], stderr=subprocess.PIPE) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    index = Index(location)
    try:
        assert [r["version_num"] for r in index.query("SELECT version_num FROM alembic_version")] == [schema.HEAD]
    finally:
        index.close()


def test_migrate_says_where_the_index_stands_and_upgrades_it(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    old = sqlite3.connect(path)
    old.executescript(BEFORE_MIGRATIONS)
    old.close()
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(config_dict(tmp_path)))

    def migrate(*args: str) -> Any:
        return processes.run([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "migrate", *args],
                              timeout=120)

    status = migrate("--status")
    assert status.returncode == 1 and "none (before migrations)" in status.stdout and "behind" in status.stdout
    done = migrate()
    assert done.returncode == 0, done.stderr
    assert f"schema revision none -> {schema.HEAD}" in done.stdout
    status = migrate("--status")
    assert status.returncode == 0 and "(current)" in status.stdout
    back = migrate("--to", "0001")
    assert back.returncode == 0 and f"{schema.HEAD} -> 0001" in back.stdout
    wrong = migrate("--to", "nonsense")
    assert wrong.returncode == 1 and "nonsense" in wrong.stderr
    # A new machine: migrate (a unit's ExecStartPre) creates the index.
    config.write_text(yaml.safe_dump(config_dict(tmp_path, index={"path": str(tmp_path / "new" / "index.sqlite")})))
    assert migrate("--status").returncode == 1
    created = migrate()
    assert created.returncode == 0 and f"none -> {schema.HEAD}" in created.stdout
