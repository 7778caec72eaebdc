"""The index schema's version: Alembic migrations (dicom_node/storage/migrations/versions), one history
for SQLite and PostgreSQL.

Every process that opens the index checks the revision the database records
(``alembic_version``) against the revision this release was written for (``HEAD``): equal, it
goes on (one cheap query); older (or a database with no revision: empty, or written by a
release before migrations, which the baseline adopts), it upgrades first, logging what it did;
newer, it refuses to run, since this release does not know that schema. ``dicom-node migrate``
does the same upgrade as an explicit step (the upgrade order in docs/deploy/README.md), and
``--status`` says where a database stands.

A new revision: a file in migrations/versions whose ``down_revision`` is the current head,
written with Alembic's ``op`` so that it runs on both databases (``render_as_batch`` lets
SQLite alter tables), and ``HEAD`` moved to it; tests/storage/test_schema.py checks that ``HEAD`` is
Alembic's head and upgrades an old index through every revision.
"""

from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..config import is_postgres_url, redacted
from ..errors import IndexError_

log = logging.getLogger(__name__)

#: The revision this release's code reads and writes.
HEAD = "0006"
MIGRATIONS = Path(__file__).with_name("migrations")


def sqlalchemy_url(location: Path | str) -> str:
    """The index location as SQLAlchemy names it (psycopg 3 for PostgreSQL)."""
    text = str(location)
    if is_postgres_url(text):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return f"sqlite:///{Path(text).resolve()}"


def alembic_config(location: Path | str) -> Any:
    """Alembic's configuration for the index at ``location`` (no alembic.ini: built here)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(location).replace("%", "%%"))
    return config


def alembic_head() -> str:
    """The newest revision among the migration files (tests hold HEAD to it)."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(alembic_config("unused.sqlite")).get_current_head())


def stored_revision(db: Any, dialect: str) -> str | None:
    """The revision the database records (None: no migrations ran on it yet)."""
    present = "SELECT to_regclass('alembic_version') IS NOT NULL" if dialect == "postgresql" else \
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    if not db.execute(present).fetchone()[0]:
        return None
    row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row is not None else None


def revision_at(location: Path | str) -> str | None:
    """The revision of the index at ``location``, read without upgrading it (``migrate --status``)."""
    if is_postgres_url(location):
        import psycopg

        with psycopg.connect(str(location), autocommit=True, connect_timeout=10) as conn:
            return stored_revision(conn, "postgresql")
    import sqlite3

    conn = sqlite3.connect(f"file:{location}?mode=ro", uri=True)
    try:
        return stored_revision(conn, "sqlite")
    finally:
        conn.close()


def revisions() -> list[str]:
    """Every revision, oldest first."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config("unused.sqlite"))
    return [s.revision for s in reversed(list(scripts.walk_revisions()))]


@contextmanager
def _migration_lock(location: Path | str) -> Iterator[None]:
    """SQLite: one process upgrades at a time (a file lock beside the index); PostgreSQL's lock
    is the advisory lock migrations/env.py takes in the upgrade's transaction."""
    if is_postgres_url(location):
        yield
        return
    path = Path(str(location) + ".migrate.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(location: Path | str, target: str = "head") -> None:
    """Upgrade the index at ``location`` to ``target`` (Alembic; a no-op where it is there)."""
    from alembic import command

    with _migration_lock(location):
        command.upgrade(alembic_config(location), target)


def downgrade(location: Path | str, target: str) -> None:
    """Take the index back to ``target`` (a rollback of a release, docs/deploy/README.md)."""
    from alembic import command

    with _migration_lock(location):
        command.downgrade(alembic_config(location), target)


def ensure_current(db: Any, dialect: str, location: Path | str) -> None:
    """Make the index at ``location`` (open on ``db``) the schema this release reads: nothing
    when it is, an upgrade when it is older, IndexError_ when it is newer."""
    found = stored_revision(db, dialect)
    if found == HEAD:
        return
    if found is not None and found not in revisions():
        raise IndexError_(f"the index at {redacted(location)} has schema revision {found}, newer than this release "
                          f"knows (up to {HEAD}): run the release that wrote it, or downgrade it with that release's "
                          "dicom-node migrate --to")
    try:
        upgrade(location)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and Alembic's errors: the index cannot open
        raise IndexError_(f"cannot upgrade the index at {redacted(location)} to schema revision {HEAD}: "
                          f"{type(exc).__name__}: {exc}") from exc
    if found is not None:
        log.warning("Index %s: schema upgraded from revision %s to %s", redacted(location), found, HEAD)
