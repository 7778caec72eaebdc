"""The index on PostgreSQL (``index.url: postgresql://...``): the same tables and the same
statements as on SQLite, through a connection that speaks the sqlite3 interface the index,
the job queue and the outbox use (``execute`` with ``?`` placeholders, rows read by name or
position).

What differs between the two is said here, once:

- placeholders: ``?`` becomes ``%s`` outside quoted strings; every literal ``%`` doubles;
- ``INSERT OR IGNORE`` becomes ``INSERT ... ON CONFLICT DO NOTHING``; two-argument ``max`` and
  ``min`` become ``GREATEST`` and ``LEAST``;
- DDL: ``INTEGER PRIMARY KEY`` becomes ``BIGSERIAL PRIMARY KEY``, ``INTEGER`` ``BIGINT`` (file
  sizes pass 2 GiB), ``REAL`` ``DOUBLE PRECISION``, ``BLOB`` ``BYTEA``;
- a write transaction takes one transaction-scoped advisory lock first, so writers are
  serialised exactly as SQLite's ``BEGIN IMMEDIATE`` serialises them (every statement written
  for SQLite keeps its meaning: a read-modify-write never interleaves with another); readers
  never wait. Finer-grained locking (SKIP LOCKED claims) is for the job engine to bring.

The connection is in autocommit mode and the index issues ``BEGIN`` / ``COMMIT`` / ``ROLLBACK``
itself, as it does on SQLite.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

#: Every error the driver raises (the index turns them into IndexError_).
DatabaseError = psycopg.Error

#: The advisory lock key write transactions take ("DICM" in ASCII).
WRITE_LOCK_KEY = 0x4449434D

_TOKENS = re.compile(r"'(?:[^']|'')*'|\?|%")
_TWO_ARGUMENT = re.compile(r"\b(max|min)\(\s*([^(),]+?)\s*,\s*([^(),]+?)\s*\)", re.IGNORECASE)
_INSERT_OR_IGNORE = re.compile(r"\bINSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)


def to_postgres(sql: str) -> str:
    """A statement written for SQLite, as PostgreSQL takes it (the module docstring's rules)."""
    # psycopg reads every '%' as a placeholder, in quoted strings too: they double everywhere,
    # while a '?' in a quoted string stays a character.
    sql = _TOKENS.sub(lambda m: "%s" if m.group(0) == "?" else m.group(0).replace("%", "%%"), sql)
    sql = _TWO_ARGUMENT.sub(lambda m: f"{'GREATEST' if m.group(1).lower() == 'max' else 'LEAST'}({m.group(2)}, {m.group(3)})",
                            sql)
    if _INSERT_OR_IGNORE.search(sql):
        sql = _INSERT_OR_IGNORE.sub("INSERT INTO", sql)
        returning = _RETURNING.search(sql)
        sql = (sql[:returning.start()] + "ON CONFLICT DO NOTHING " + sql[returning.start():]) if returning \
            else sql.rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    stripped = sql.lstrip().upper()
    if stripped.startswith(("CREATE TABLE", "ALTER TABLE")):
        sql = re.sub(r"\bINTEGER\s+PRIMARY\s+KEY\b", "BIGSERIAL PRIMARY KEY", sql, flags=re.IGNORECASE)
        sql = re.sub(r"\bINTEGER\b", "BIGINT", sql, flags=re.IGNORECASE)
        sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql, flags=re.IGNORECASE)
        sql = re.sub(r"\bBLOB\b", "BYTEA", sql, flags=re.IGNORECASE)
    return sql


class Row:
    """A result row read by column name or position, like sqlite3.Row (``dict(row)`` works)."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._names[key]] if isinstance(key, str) else self._values[key]

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values))})"


def execute_script(op: Any, script: str) -> None:
    """Run a migration's ``;``-separated SQLite DDL through Alembic's ``op``, translated when the
    database is PostgreSQL (the tables every revision that creates tables writes this way)."""
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in (s.strip() for s in script.split(";")):
        if statement:
            op.execute(to_postgres(statement) if postgres else statement)


def _row_factory(cursor: psycopg.Cursor[Any]) -> Any:
    names = {column.name: number for number, column in enumerate(cursor.description or [])}
    return lambda values: Row(names, values)


class PgConnection:
    """One psycopg connection with the sqlite3 connection's ``execute`` / ``executemany``.

    A connection the server dropped (PostgreSQL restarted, a network cut) is replaced at the
    next statement outside a transaction, so every process of the node reconnects by itself;
    a statement inside a transaction fails instead (the index rolls the transaction back and
    the caller's work is retried or refused, never half-done)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = self._connect()
        self._in_transaction = False

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, row_factory=_row_factory, connect_timeout=10)

    def _usable(self) -> psycopg.Connection[Any]:
        if self._conn.broken or self._conn.closed:
            if self._in_transaction:
                raise psycopg.OperationalError("the connection to the index database was lost in a transaction")
            self._conn = self._connect()
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        statement = sql.strip().upper()
        if statement in ("BEGIN IMMEDIATE", "BEGIN"):
            self._in_transaction = False
            conn = self._usable()
            cursor = conn.execute("BEGIN")
            self._in_transaction = True
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            return cursor
        if statement in ("COMMIT", "ROLLBACK"):
            try:
                if statement == "ROLLBACK" and (self._conn.broken or self._conn.closed):
                    return None  # nothing to roll back: the server ended the transaction
                return self._conn.execute(statement)
            finally:
                self._in_transaction = False
        return self._usable().execute(to_postgres(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self._usable().cursor()
        cursor.executemany(to_postgres(sql), [tuple(r) for r in rows])
        return cursor

    def execute_script(self, sql: str) -> None:
        """Run a script written for PostgreSQL as it is (no translation, no parameters: a
        third party's schema, such as procrastinate's)."""
        self._usable().execute(sql)  # type: ignore[arg-type]  # psycopg takes a str it need not parse

    def close(self) -> None:
        self._conn.close()
