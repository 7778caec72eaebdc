"""Analysis on request and polled archives: ``requests`` holds what someone asked the node to
fetch and analyse (flow/requests.py), from the API, the command line or a polled source; and
``polled_studies`` the studies each polled source has already handed in, so none is taken twice.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL DEFAULT '',
    accession TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    route TEXT NOT NULL DEFAULT '',
    pipeline TEXT NOT NULL DEFAULT '',
    destinations TEXT NOT NULL DEFAULT '[]',
    origin TEXT NOT NULL DEFAULT 'api',
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    jobs TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS requests_by_study ON requests(study_uid);
CREATE TABLE IF NOT EXISTS polled_studies (
    source TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    seen_at REAL NOT NULL,
    request_id INTEGER,
    PRIMARY KEY (source, study_uid)
)
"""


def upgrade() -> None:
    from dicom_node.storage.index_postgres import execute_script

    execute_script(op, TABLES)


def downgrade() -> None:
    op.drop_table("polled_studies")
    op.drop_index("requests_by_study", table_name="requests")
    op.drop_index("requests_by_state", table_name="requests")
    op.drop_table("requests")
