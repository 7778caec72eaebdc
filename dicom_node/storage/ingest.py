"""Taking one received file into the node: the durability contract every way in shares.

C-STORE (net/storage_scp.py), C-GET's sub-operations and WADO-RS retrievals (net/, dicomweb/)
and the STOW-RS endpoint (dicomweb/stow_server.py) all hand a fully received file in the
store's ``.incoming`` folder to :func:`ingest`. It returns only once the file is at its final
path (fsync + rename) and its index row is committed; anything else raises the node's errors
(errors.py) and leaves nothing behind, so each front end answers failure and the sender keeps
its copy: a DICOM status for DIMSE, a Failure Reason for DICOMweb.
"""

from __future__ import annotations

import filecmp
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DiskFullError, IndexError_, InvalidInstanceError
from .events import emit_alert
from .header import InstanceHeader, read_header
from .index import Index, Outcome, Receipt
from .store import InstanceStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ingested:
    """One instance taken in: its header, what it did to the index, where it lies, its size."""

    header: InstanceHeader
    outcome: Outcome
    path: Path
    size: int


def _committed_anyway(index: Index, sop_instance_uid: str, final: Path, receipt: Receipt) -> bool:
    """Whether this receipt's row is in the index although recording it reported an error."""
    try:
        row = index.instance(sop_instance_uid)
    except IndexError_:
        return False
    return row is not None and row["path"] == str(final) and row["received_at"] == receipt.received_at


def ingest(store: InstanceStore, index: Index, received: Path, receipt: Receipt, fd: int | None = None,
           header: InstanceHeader | None = None) -> Ingested:
    """Make ``received`` (a whole file in ``store.incoming``) a durable, indexed instance.

    A file whose bytes equal the stored copy is a duplicate (only the receipt is recorded);
    other bytes under a known SOP Instance UID replace it; a file whose final path another
    instance owns is refused (never overwrite another instance's acknowledged file). ``fd``:
    the caller's open descriptor of ``received`` (saves reopening it to fsync). ``header``:
    the file's header when the caller already read it. Raises DiskFullError, StoreError,
    InvalidInstanceError or IndexError_; ``received`` is the caller's to remove then.
    """
    try:
        store.check_free_space()
    except DiskFullError as exc:
        emit_alert(index, "disk.low", str(store.root), {"path": str(store.root), "reason": str(exc)})
        raise
    header = header if header is not None else read_header(received)
    size = os.path.getsize(received)
    final = store.path_for(header)
    known = index.instance(header.sop_instance_uid)
    if (known is None or known["path"] != str(final)) and final.exists():
        owner = index.owner_of_path(final, header.sop_instance_uid)
        if owner is not None:
            raise InvalidInstanceError(f"path of another instance ({owner}); not stored")
    if known is not None and final.exists() and filecmp.cmp(received, final, shallow=False):
        outcome = Outcome.DUPLICATE
    else:
        outcome = Outcome.NEW if known is None else Outcome.REPLACED
        final = store.commit(received, header, fd=fd)
    try:
        index.record_instance(header, final, size, receipt, outcome)
    except IndexError_ as exc:
        if not _committed_anyway(index, header.sop_instance_uid, final, receipt):
            if outcome is Outcome.NEW:  # refused: no file without its row either (the sender sends it again)
                try:
                    final.unlink()
                except OSError:
                    pass  # start-up recovery indexes it
            raise
        # SQLite can report SQLITE_FULL from the WAL checkpoint that follows a commit: the row is
        # durable all the same, so the answer is Success (what the index holds).
        log.warning("Index reported an error after committing %s (%s); its row is there: Success",
                    header.sop_instance_uid, exc)
    if outcome is not Outcome.NEW:
        log.info("SOP Instance %s received again from %s: %s", header.sop_instance_uid, receipt.calling_ae,
                 outcome.value)
    return Ingested(header, outcome, final, size)
