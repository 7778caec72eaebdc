"""Which version of a model serves a pipeline: the built-in card until a site's fine-tuned
version is promoted. A new version is registered ``shadow`` (it runs beside the active one on the
same series, its results compared and never sent), becomes ``active`` only by ``dicom-node
models promote`` (the version it replaces becomes ``retired``), and ``models rollback`` makes the
most recently retired one active again. No row for a model: the built-in card is active."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .index import Index

#: retired: was active and was replaced or rolled back; discarded: a shadow replaced by a newer one.
STATES = ("shadow", "active", "retired", "discarded")


def register(index: Index, name: str, version: str, path: Path, note: str = "", now: float | None = None) -> None:
    """A new version, in shadow (another shadow of the same model is discarded: one at a time)."""
    now = time.time() if now is None else now
    with index.transaction() as db:
        db.execute("UPDATE model_versions SET state = 'discarded', changed_at = ? WHERE name = ? AND state = 'shadow'", (now, name))
        db.execute("INSERT INTO model_versions(name, version, path, state, created_at, changed_at, note) "
                   "VALUES(?, ?, ?, 'shadow', ?, ?, ?)", (name, version, str(path), now, now, note))


def versions(index: Index, name: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM model_versions" + (" WHERE name = ?" if name else "") + " ORDER BY name, id"
    return [dict(r) for r in index.query(sql, (name,) if name else ())]


def in_state(index: Index, name: str, state: str) -> dict[str, Any] | None:
    rows = index.query("SELECT * FROM model_versions WHERE name = ? AND state = ? ORDER BY changed_at DESC, id DESC LIMIT 1",
                       (name, state))
    return dict(rows[0]) if rows else None


def promote(index: Index, name: str, now: float | None = None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The shadow version becomes active; (the version it replaced or None for the built-in, the new one).
    LookupError when there is no shadow version."""
    now = time.time() if now is None else now
    shadow = in_state(index, name, "shadow")
    if shadow is None:
        raise LookupError(f"{name} has no version in shadow to promote")
    previous = in_state(index, name, "active")
    with index.transaction() as db:
        db.execute("UPDATE model_versions SET state = 'retired', changed_at = ? WHERE name = ? AND state = 'active'", (now, name))
        db.execute("UPDATE model_versions SET state = 'active', changed_at = ?, replaced_id = ? WHERE id = ?",
                   (now, previous["id"] if previous else None, shadow["id"]))
    return previous, {**shadow, "state": "active"}


def rollback(index: Index, name: str, now: float | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The active version is retired and the one it replaced at its promotion (else the
    built-in card) serves again; (the version rolled back, the one now active or None for
    the built-in). LookupError when no fine-tuned version is active."""
    now = time.time() if now is None else now
    active = in_state(index, name, "active")
    if active is None:
        raise LookupError(f"{name}: the built-in version is active; nothing to roll back")
    replaced = active.get("replaced_id")
    restore = next((r for r in versions(index, name) if r["id"] == replaced), None) if replaced is not None else None
    with index.transaction() as db:
        db.execute("UPDATE model_versions SET state = 'retired', changed_at = ? WHERE id = ?", (now, active["id"]))
        if restore is not None:
            db.execute("UPDATE model_versions SET state = 'active', changed_at = ? WHERE id = ?", (now, restore["id"]))
    return active, restore
