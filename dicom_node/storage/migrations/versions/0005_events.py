"""The event stream and its notifications: ``events`` records what happened (a job done, a
delivery dead, ...) in the transaction that made it happen, so a crash loses none;
``notifications`` is one row per event and subscription target, delivered with retries
(dicom_node/notify/).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    created_at REAL NOT NULL,
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    job_id INTEGER,
    payload TEXT NOT NULL DEFAULT '{}',
    fanned_out INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_to_fan_out ON events(fanned_out, id);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL,
    subscription INTEGER NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    delivered_at REAL,
    UNIQUE (event_id, subscription, target)
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications(state, next_attempt_at)
"""


def upgrade() -> None:
    from dicom_node.storage.index_postgres import execute_script

    execute_script(op, TABLES)


def downgrade() -> None:
    op.drop_index("notifications_due", table_name="notifications")
    op.drop_table("notifications")
    op.drop_index("events_to_fan_out", table_name="events")
    op.drop_table("events")
