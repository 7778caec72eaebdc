"""Instances by path: before a received file is renamed into place, the storage SCP asks
whether another instance in the index owns that path, and refuses the commit if one does
(an acknowledged instance is never overwritten by a different one). Indexes written before
files were named by the UID itself may hold two rows on one path, so the index is not unique.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("instances_by_path", "instances", ["path"])


def downgrade() -> None:
    op.drop_index("instances_by_path", table_name="instances")
