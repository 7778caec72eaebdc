"""The node's index: a SQLite database (WAL) of every stored instance and the state of each
series and study.

It is what routing reads (patient, study, series, modality, body part, description, who sent
it) and where completion keeps its state, so a restart resumes where the node stopped.

Series and study life cycle::

    (first instance) -> receiving --(quiet for stable_seconds)--> complete
                           ^                                         |
                           +---- a late instance: version + 1 -------+

A late instance re-opens a completed series (and its study) as a new *version*, so later
stages see "series X version 2 is complete" and redo their work for it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..config import is_postgres_url, redacted
from ..errors import IndexError_
from .events import emit
from .header import InstanceHeader
from .schema import ensure_current
from .store import fsync_directory, make_durable_dirs

#: "No limit" for a LIMIT ? parameter, on both backends (SQLite's -1 is an error on PostgreSQL).
_NO_LIMIT = 2**62

class State(str, Enum):
    RECEIVING = "receiving"
    COMPLETE = "complete"


class Outcome(str, Enum):
    """What storing one received instance did to the index."""

    NEW = "new"
    #: The same SOP Instance UID with the same bytes: nothing changed, the receipt is recorded.
    DUPLICATE = "duplicate"
    #: The same SOP Instance UID with other bytes: the file was replaced.
    REPLACED = "replaced"


@dataclass(frozen=True, slots=True)
class Receipt:
    """Who sent an instance, from where and when."""

    calling_ae: str
    called_ae: str
    peer_address: str
    received_at: float


@dataclass(frozen=True, slots=True)
class Completed:
    """A series or study that just became complete, at a given version."""

    level: str  # "series" | "study"
    uid: str
    version: int
    study_uid: str


class Index:
    """Thread-safe access to the index database; one connection, one writer at a time."""

    def __init__(self, path: Path | str, synchronous: str = "FULL") -> None:
        #: A file path (SQLite, the embedded default) or a ``postgresql://`` URL (index_postgres.py).
        self.path = path
        self.dialect = "postgresql" if is_postgres_url(path) else "sqlite"
        self._errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        try:
            if self.dialect == "postgresql":
                self._open_postgres(str(path))
            else:
                self._open_sqlite(Path(path), synchronous)
            # The tables, at the revision this release reads (schema.py: Alembic migrations).
            ensure_current(self._db, self.dialect, path)
            if self.dialect == "sqlite":
                self._db.execute("PRAGMA busy_timeout=0")
                # The -wal file is made anew whenever the index is opened after a clean close, and
                # SQLite makes its name durable nowhere: without this a power cut could take every
                # commit since the last checkpoint with it.
                fsync_directory(Path(path).parent)
        except (*self._errors, IndexError_) as exc:
            if getattr(self, "_db", None) is not None:
                self._db.close()
            if isinstance(exc, IndexError_):
                raise
            raise IndexError_(f"cannot open index {redacted(path)}: {exc}") from exc
        self._lock = threading.RLock()

    def _open_sqlite(self, path: Path, synchronous: str) -> None:
        make_durable_dirs(path.parent)
        # timeout=0: lock waits are retried in _begin_immediate (readers never wait in WAL).
        self._db: Any = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=0)
        self._db.row_factory = sqlite3.Row
        # Opening waits for another process that is creating or upgrading the index (switching to
        # WAL takes an exclusive lock); after it, lock waits are _begin_immediate's.
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")

    def make_durable(self) -> None:
        """Everything committed so far on the disk, whatever ``synchronous`` says (a checkpoint
        fsyncs the WAL and the database): for the few commits a power cut must not undo."""
        if self.dialect == "sqlite":
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(FULL)")

    def _open_postgres(self, url: str) -> None:
        from .index_postgres import DatabaseError, PgConnection

        self._errors = (DatabaseError,)
        self._db = PgConnection(url)

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back and re-raised as IndexError_ on failure."""
        with self._lock:
            try:
                self._begin_immediate()
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                try:
                    self._db.execute("COMMIT")
                except self._errors:
                    # A COMMIT that fails (SQLITE_FULL when the disk fills, SQLITE_IOERR) may leave the
                    # transaction open: its rows would stay visible to this connection and the next
                    # BEGIN would fail. Roll back (an error here means SQLite already did).
                    try:
                        self._db.execute("ROLLBACK")
                    except self._errors:
                        pass
                    raise
            except self._errors as exc:
                raise IndexError_(f"index write failed: {exc}") from exc

    #: Longest a writer waits for another process's write lock before giving up.
    LOCK_TIMEOUT_SECONDS = 30.0

    def _begin_immediate(self) -> None:
        """Take the write lock, retrying quickly while another listener process holds it.

        SQLite's own busy handler sleeps 1, 2, 5, 10 ... ms between tries; index transactions
        last well under a millisecond, so with several listener processes those sleeps, not
        the work, would set the pace. Retry every 0.2 ms instead, up to LOCK_TIMEOUT_SECONDS.
        """
        deadline = time.monotonic() + self.LOCK_TIMEOUT_SECONDS
        while True:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.0002)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except self._errors as exc:
                raise IndexError_(f"index read failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- clean shutdown marker ------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # -- instances ------------------------------------------------------------------------

    def instance(self, sop_instance_uid: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return rows[0] if rows else None

    def owner_of_path(self, path: Path, other_than: str) -> str | None:
        """The SOP Instance UID of an instance other than ``other_than`` whose file is ``path``, if
        any: a file that belongs to another instance must not be replaced by this one."""
        rows = self.query("SELECT sop_instance_uid FROM instances WHERE path = ? AND sop_instance_uid <> ? LIMIT 1",
                          (str(path), other_than))
        return str(rows[0][0]) if rows else None

    def record_instance(self, header: InstanceHeader, path: Path, size: int, receipt: Receipt, outcome: Outcome) -> None:
        """Record a stored instance, and open (or re-open) its series and study.

        A duplicate with identical bytes only adds a receipt: the series stays as it is.
        """
        with self.transaction() as db:
            if outcome is Outcome.DUPLICATE:
                db.execute("UPDATE instances SET receive_count = receive_count + 1 WHERE sop_instance_uid = ?", (header.sop_instance_uid,))
                self._add_receipt(db, header.sop_instance_uid, receipt, outcome)
                return
            self._touch_study(db, header, receipt.received_at)
            series_version = self._touch_series(db, header, receipt, new_instance=outcome is Outcome.NEW)
            db.execute(
                """
                INSERT INTO instances(sop_instance_uid, sop_class_uid, series_uid, study_uid, instance_number,
                    transfer_syntax_uid, path, size, calling_ae, called_ae, peer_address, received_at, series_version)
                VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(sop_instance_uid) DO UPDATE SET
                    sop_class_uid = excluded.sop_class_uid, series_uid = excluded.series_uid,
                    study_uid = excluded.study_uid, instance_number = excluded.instance_number,
                    transfer_syntax_uid = excluded.transfer_syntax_uid, path = excluded.path,
                    size = excluded.size, calling_ae = excluded.calling_ae, called_ae = excluded.called_ae,
                    peer_address = excluded.peer_address, received_at = excluded.received_at,
                    series_version = excluded.series_version, receive_count = instances.receive_count + 1
                """,
                (
                    header.sop_instance_uid, header.sop_class_uid, header.series_instance_uid,
                    header.study_instance_uid, header.instance_number, header.transfer_syntax_uid,
                    str(path), size, receipt.calling_ae, receipt.called_ae, receipt.peer_address,
                    receipt.received_at, series_version,
                ),
            )
            if outcome is Outcome.REPLACED:
                self._add_receipt(db, header.sop_instance_uid, receipt, outcome)

    @staticmethod
    def _add_receipt(db: sqlite3.Connection, uid: str, receipt: Receipt, outcome: Outcome) -> None:
        db.execute(
            "INSERT INTO receipts(sop_instance_uid, received_at, calling_ae, peer_address, outcome) VALUES(?, ?, ?, ?, ?)",
            (uid, receipt.received_at, receipt.calling_ae, receipt.peer_address, outcome.value),
        )

    @staticmethod
    def _touch_study(db: sqlite3.Connection, header: InstanceHeader, now: float) -> None:
        db.execute(
            """
            INSERT INTO studies(study_uid, patient_id, patient_name, study_date, study_description,
                accession_number, state, version, first_received_at, last_received_at, version_started_at)
            VALUES(?, ?, ?, ?, ?, ?, 'receiving', 1, ?, ?, ?)
            ON CONFLICT(study_uid) DO UPDATE SET
                last_received_at = max(studies.last_received_at, excluded.last_received_at),
                version_started_at = CASE WHEN studies.state = 'complete' THEN excluded.last_received_at
                                          ELSE studies.version_started_at END,
                version = CASE WHEN studies.state = 'complete' THEN studies.version + 1 ELSE studies.version END,
                state = 'receiving', completed_at = NULL
            """,
            (
                header.study_instance_uid, header.patient_id, header.patient_name, header.study_date,
                header.study_description, header.accession_number, now, now, now,
            ),
        )

    @staticmethod
    def _touch_series(db: sqlite3.Connection, header: InstanceHeader, receipt: Receipt, new_instance: bool) -> int:
        row = db.execute(
            """
            INSERT INTO series(series_uid, study_uid, modality, body_part_examined, series_description,
                series_number, calling_ae, state, version, instance_count, first_received_at, last_received_at)
            VALUES(?, ?, ?, ?, ?, ?, ?, 'receiving', 1, ?, ?, ?)
            ON CONFLICT(series_uid) DO UPDATE SET
                last_received_at = max(series.last_received_at, excluded.last_received_at),
                instance_count = series.instance_count + excluded.instance_count,
                version = CASE WHEN series.state = 'complete' THEN series.version + 1 ELSE series.version END,
                state = 'receiving', completed_at = NULL
            RETURNING version
            """,
            (
                header.series_instance_uid, header.study_instance_uid, header.modality,
                header.body_part_examined, header.series_description, header.series_number,
                receipt.calling_ae, 1 if new_instance else 0, receipt.received_at, receipt.received_at,
            ),
        ).fetchone()
        return int(row["version"])

    # -- completion -----------------------------------------------------------------------

    def complete_stable(self, now: float, series_stable_seconds: float, study_stable_seconds: float) -> list[Completed]:
        """Mark series, then studies, complete once quiet long enough; return what changed.

        A study completes only when none of its series is still receiving.
        """
        with self.transaction() as db:
            series = db.execute(
                """
                UPDATE series SET state = 'complete', completed_at = ?
                WHERE state = 'receiving' AND last_received_at <= ?
                RETURNING series_uid, version, study_uid
                """,
                (now, now - series_stable_seconds),
            ).fetchall()
            studies = db.execute(
                """
                UPDATE studies SET state = 'complete', completed_at = ?
                WHERE state = 'receiving' AND last_received_at <= ?
                  AND NOT EXISTS (SELECT 1 FROM series s WHERE s.study_uid = studies.study_uid AND s.state = 'receiving')
                RETURNING study_uid, version
                """,
                (now, now - study_stable_seconds),
            ).fetchall()
            for row in studies:  # the event commits with the state it reports
                facts = db.execute("SELECT count(*) AS series, coalesce(sum(instance_count), 0) AS instances, "
                                   "max(calling_ae) AS calling_ae FROM series WHERE study_uid = ?",
                                   (row["study_uid"],)).fetchone()
                emit(db, "study.complete", study_uid=row["study_uid"], now=now,
                     payload={"version": row["version"], "series": facts["series"], "instances": facts["instances"],
                              "calling_ae": facts["calling_ae"] or ""})
        done = [Completed("series", r["series_uid"], r["version"], r["study_uid"]) for r in series]
        done += [Completed("study", r["study_uid"], r["version"], r["study_uid"]) for r in studies]
        return done

    # -- reports --------------------------------------------------------------------------

    def studies(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Studies with their series, newest first (``limit``: only that many), for ``dicom-node
        status`` and the dashboard."""
        studies = [dict(r) for r in self.query("SELECT * FROM studies ORDER BY last_received_at DESC LIMIT ?",
                                                (_NO_LIMIT if limit is None else limit,))]
        series = self.query("SELECT * FROM series WHERE study_uid IN (SELECT study_uid FROM studies ORDER BY "
                            "last_received_at DESC LIMIT ?) ORDER BY series_number, first_received_at",
                            (_NO_LIMIT if limit is None else limit,))
        by_study: dict[str, list[dict[str, Any]]] = {}
        for row in series:
            by_study.setdefault(row["study_uid"], []).append(dict(row))
        for study in studies:
            study["series"] = by_study.get(study["study_uid"], [])
        return studies

    def series_files(self, series_uid: str) -> list[Path]:
        """The stored files of a series (what a job reads)."""
        return [Path(r["path"]) for r in self.query(
            "SELECT path FROM instances WHERE series_uid = ? ORDER BY instance_number, sop_instance_uid", (series_uid,))]

    def known_paths(self) -> set[str]:
        return {r["path"] for r in self.query("SELECT path FROM instances")}
