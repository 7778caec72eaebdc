"""Alembic's environment for the index: one transaction for the whole upgrade. On PostgreSQL it
first takes the advisory lock the index's write transactions take, so an upgrade waits for
writers, writers wait for it, and two processes upgrading at once upgrade once (the second reads
the version after the first committed). On SQLite schema.upgrade holds a file lock instead."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

config = context.config


def run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, transaction_per_migration=False, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            from dicom_node.storage.index_postgres import WRITE_LOCK_KEY

            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
        context.run_migrations()


engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
with engine.connect() as connection:
    run(connection)
engine.dispose()
