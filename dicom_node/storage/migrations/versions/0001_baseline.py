"""The index as the node kept it before its schema had migrations (up to commit 383e42b).

Every statement is idempotent, so this revision also adopts an index an earlier release wrote
without Alembic: missing tables are created, the columns releases added along the way
(``series.routed_version``, ``studies.version_started_at`` / ``routed_version``,
``jobs.ran_pipeline``) are added where absent, and the database is stamped. The DDL is written
for SQLite and translated for PostgreSQL by the index's own rules (index_postgres.to_postgres).

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL DEFAULT '',
    patient_name TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '',
    study_description TEXT NOT NULL DEFAULT '',
    accession_number TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    completed_at REAL,
    version_started_at REAL NOT NULL DEFAULT 0,
    routed_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    modality TEXT NOT NULL DEFAULT '',
    body_part_examined TEXT NOT NULL DEFAULT '',
    series_description TEXT NOT NULL DEFAULT '',
    series_number INTEGER,
    calling_ae TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    instance_count INTEGER NOT NULL DEFAULT 0,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    completed_at REAL,
    routed_version INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS series_by_state ON series(state, last_received_at);
CREATE INDEX IF NOT EXISTS series_by_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    called_ae TEXT NOT NULL DEFAULT '',
    peer_address TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    series_version INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS study_routes (
    study_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    route TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    decided_at REAL NOT NULL,
    PRIMARY KEY (study_uid, version, route)
);
CREATE TABLE IF NOT EXISTS receipts (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    received_at REAL NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    peer_address TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    route TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_version INTEGER NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    destinations TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before REAL NOT NULL,
    lease_owner TEXT,
    lease_expires REAL,
    last_error TEXT NOT NULL DEFAULT '',
    ran_pipeline TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(state, priority DESC, not_before);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    job_key TEXT NOT NULL,
    object TEXT NOT NULL,
    peer TEXT NOT NULL,
    candidates TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    delivered_at REAL,
    delivered_variant TEXT,
    UNIQUE(job_key, object, peer)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS pseudonyms (
    pseudonym TEXT NOT NULL,
    peer TEXT NOT NULL,
    original TEXT NOT NULL,
    kind TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    route TEXT NOT NULL,
    profile TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (pseudonym, peer)
)
"""


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    from dicom_node.storage.index_postgres import execute_script

    execute_script(op, TABLES)
    # Columns earlier releases added at open, for an index written before them.
    if "routed_version" not in _columns("series"):  # before routing existed
        op.execute("ALTER TABLE series ADD COLUMN routed_version INTEGER NOT NULL DEFAULT 0")
    if "routed_version" not in _columns("studies"):  # before study rules: its studies count as routed
        op.execute("ALTER TABLE studies ADD COLUMN version_started_at REAL NOT NULL DEFAULT 0")
        op.execute("ALTER TABLE studies ADD COLUMN routed_version INTEGER NOT NULL DEFAULT 0")
        op.execute("UPDATE studies SET routed_version = version, version_started_at = first_received_at")
    if "ran_pipeline" not in _columns("jobs"):  # before routes could list several pipelines
        op.execute("ALTER TABLE jobs ADD COLUMN ran_pipeline TEXT NOT NULL DEFAULT ''")
    op.execute("CREATE INDEX IF NOT EXISTS studies_unrouted ON studies(study_uid) WHERE routed_version < version")


def downgrade() -> None:
    raise RuntimeError("the baseline is the oldest schema: there is nothing to go back to")
