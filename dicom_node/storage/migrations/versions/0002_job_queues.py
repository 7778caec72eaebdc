"""A queue per job: GPU pipelines' jobs wait for workers that serve the gpu queue
(job_engine.queue_for); every job queued before goes to ``default``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("queue", sa.Text(), nullable=False, server_default="default"))
    op.create_index("jobs_by_queue", "jobs", ["queue", "state"])


def downgrade() -> None:
    op.drop_index("jobs_by_queue", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("queue")
