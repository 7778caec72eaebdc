"""Start-up recovery: remove half-received files and index any stored file the index lacks.

The index commit follows the file's rename, so a crash between the two leaves a durable file
with no row (its sender got no Success and will send it again; indexing it now is harmless).
The node writes a clean-shutdown mark when it stops; without that mark the storage folder is
walked and reconciled, which makes the folder the source of truth after any crash.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..errors import InvalidInstanceError
from .header import read_header
from .index import Index, Outcome, Receipt
from .store import InstanceStore

log = logging.getLogger(__name__)

CLEAN_SHUTDOWN_KEY = "clean_shutdown"


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    leftovers_removed: int
    reconciled: bool
    files_indexed: int
    files_unreadable: int
    #: No run had ever used this index (no shutdown mark at all): nothing was unclean.
    first_start: bool = False


def recover(store: InstanceStore, index: Index) -> RecoveryReport:
    """Bring store and index back in line after whatever ended the last run."""
    removed = store.remove_leftovers()
    if removed:
        log.warning("Removed %d partial file(s) left by an interrupted receive", removed)
    mark = index.get_meta(CLEAN_SHUTDOWN_KEY)
    clean = mark == "1"
    index.set_meta(CLEAN_SHUTDOWN_KEY, "0")
    # On the disk before anything is received: a power cut that took this commit back would leave
    # the earlier "clean" mark, and the next start would skip the recovery this start needs.
    index.make_durable()
    if clean:
        return RecoveryReport(removed, False, 0, 0)
    known = index.known_paths()
    indexed = unreadable = 0
    for path in store.iter_files():
        if str(path) in known:
            continue
        try:
            header = read_header(path)
        except InvalidInstanceError as exc:
            log.error("Stored file %s is unreadable, left in place: %s", path, exc)
            unreadable += 1
            continue
        receipt = Receipt(calling_ae="", called_ae="", peer_address="recovered", received_at=os.path.getmtime(path))
        index.record_instance(header, path, os.path.getsize(path), receipt, Outcome.NEW)
        indexed += 1
    if indexed:
        log.warning("Indexed %d stored file(s) the index did not hold (unclean shutdown)", indexed)
    return RecoveryReport(removed, True, indexed, unreadable, first_start=mark is None)


def mark_clean_shutdown(index: Index) -> None:
    index.set_meta(CLEAN_SHUTDOWN_KEY, "1")
