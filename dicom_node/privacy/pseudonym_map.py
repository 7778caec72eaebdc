"""Which pseudonyms the node handed out, kept in its own index so that results coming back can be
mapped to the originals. The table never leaves the node; every pseudonym in it can be
recomputed from the key and the original (pseudonyms.py), the table only saves searching.

One row per pseudonymous UID (every UID of every instance sent de-identified) and per patient
pseudonym, and per peer it went to (one site key gives every peer the same pseudonyms), with the
study it belongs to, the route and the profile used.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable


def record(db: sqlite3.Connection, pairs: Iterable[tuple[str, str, str]], study_uid: str, route: str, peer: str,
           profile: str, now: float) -> None:
    """Remember (pseudonym, original, kind) pairs sent to ``peer``; a pair already known for that
    peer keeps its first row."""
    db.executemany("INSERT OR IGNORE INTO pseudonyms(pseudonym, original, kind, study_uid, route, peer, profile, created_at) "
                   "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                   [(p, o, kind, study_uid, route, peer, profile, now) for p, o, kind in pairs])


def lookup(db: sqlite3.Connection, pseudonym: str) -> list[sqlite3.Row]:
    """The rows of ``pseudonym``, one per peer it went to (none: not one the node handed out)."""
    return db.execute("SELECT * FROM pseudonyms WHERE pseudonym = ? ORDER BY created_at", (pseudonym.strip(),)).fetchall()


def originals(db: sqlite3.Connection, pseudonyms: Iterable[str]) -> dict[str, str]:
    """pseudonym -> original for those of ``pseudonyms`` the node handed out."""
    wanted = sorted({p.strip() for p in pseudonyms if p})
    found: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        marks = ",".join("?" * len(chunk))
        found.update((r["pseudonym"], r["original"]) for r in
                     db.execute(f"SELECT DISTINCT pseudonym, original FROM pseudonyms WHERE pseudonym IN ({marks})", chunk))
    return found
