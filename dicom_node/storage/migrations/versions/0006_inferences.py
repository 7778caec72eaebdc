"""Post-market monitoring: ``inferences`` holds one row per pipeline a job held a series against
(what ran, what declined, what failed, with the gate's measures, per-structure confidence and
volume, the scanner), written in the transaction that ends the job; ``corrections`` holds what
a radiologist's edited segmentation says of the node's (per-segment Dice and surface distance);
``model_versions`` which fine-tuned version of a model is active, in shadow or retired.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE IF NOT EXISTS inferences (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    job_id INTEGER,
    job_key TEXT NOT NULL DEFAULT '',
    route TEXT NOT NULL DEFAULT '',
    pipeline TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    model_version TEXT NOT NULL DEFAULT '',
    device_uid TEXT NOT NULL DEFAULT '',
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    gate_applicable INTEGER NOT NULL DEFAULT 0,
    gate_distance REAL,
    manufacturer TEXT NOT NULL DEFAULT '',
    scanner_model TEXT NOT NULL DEFAULT '',
    station TEXT NOT NULL DEFAULT '',
    series_description TEXT NOT NULL DEFAULT '',
    protocol TEXT NOT NULL DEFAULT '',
    mean_confidence REAL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS inferences_by_model ON inferences(model, created_at);
CREATE INDEX IF NOT EXISTS inferences_by_job ON inferences(job_id);
CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    job_id INTEGER,
    model TEXT NOT NULL DEFAULT '',
    model_version TEXT NOT NULL DEFAULT '',
    device_uid TEXT NOT NULL DEFAULT '',
    source_series_uid TEXT NOT NULL,
    corrected_sop_uid TEXT NOT NULL UNIQUE,
    manufacturer TEXT NOT NULL DEFAULT '',
    scanner_model TEXT NOT NULL DEFAULT '',
    mean_dice REAL,
    segments TEXT NOT NULL DEFAULT '[]',
    case_path TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS model_versions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    changed_at REAL NOT NULL,
    replaced_id INTEGER,
    note TEXT NOT NULL DEFAULT '',
    UNIQUE (name, version)
)
"""


def upgrade() -> None:
    from dicom_node.storage.index_postgres import execute_script

    execute_script(op, TABLES)


def downgrade() -> None:
    op.drop_table("model_versions")
    op.drop_table("corrections")
    op.drop_index("inferences_by_job", table_name="inferences")
    op.drop_index("inferences_by_model", table_name="inferences")
    op.drop_table("inferences")
