"""pynetdicom's module settings and the private hooks the listener and the senders rely on, in
the one folder where pynetdicom internals change, behind the same version check as the other
patches (``pynetdicom_tuning.supported``).

- ``pynetdicom._config`` flags: streamed C-STORE receive and send (memory bounded whatever the
  instance size), no per-PDU log handlers unless asked, no query identifiers (PHI) in the log.
- Streamed C-STORE files land in the receiving AE's ``.incoming`` folder, not the system temp
  folder (another file system would make the final rename a copy): pynetdicom creates them with
  ``dimse_messages.NamedTemporaryFile`` in the association's DUL thread.
- The descriptor of a streamed dataset file pynetdicom still holds open during the handler
  (``request._dataset_file``), so the store can fsync it without opening it again.
- ``AE._servers``: a server the node starts itself (its own accept loop) is stopped by
  ``ae.shutdown()`` as one from ``start_server`` would be.
- pynetdicom reads ``AE.require_calling_aet`` and ``require_called_aet`` while it negotiates,
  in the association's own thread: ``negotiating_association`` is that thread, for the AE to
  decide per caller.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from pynetdicom import _config
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.association import Association

from . import p_data

_MARK = "_dicom_node_incoming"


def configure_listener(log_pdus: bool, pdu_deadline_seconds: float) -> None:
    """Settings every listener process needs before its first association."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    # pynetdicom's "standard" handlers format a log line per PDU and per DIMSE message even when
    # nothing is logged; the node logs its own lines (serve --verbose turns them back on).
    _config.LOG_HANDLER_LEVEL = "standard" if log_pdus else "none"
    p_data.PDU_DEADLINE_SECONDS = pdu_deadline_seconds
    # Query/retrieve identifiers (patient names, IDs) never go to the log, --verbose or not: the
    # audit trail records what it must, the log is not a place for PHI.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    install_incoming_tempfile()


def configure_sender() -> None:
    """Send C-STORE datasets from their files in slices (memory bounded whatever the size)."""
    _config.STORE_SEND_CHUNKED_DATASET = True


def install_incoming_tempfile() -> None:
    """Make pynetdicom's streamed C-STORE files land in the receiving AE's ``incoming_dir``
    (idempotent). The decode runs in the association's DUL thread, whose ``assoc.ae`` tells
    which node is receiving; an AE without ``incoming_dir`` keeps the system temp folder."""
    current = _dimse_messages.NamedTemporaryFile
    if getattr(current, _MARK, False):
        return
    original = tempfile.NamedTemporaryFile

    def named_temporary_file(*args: Any, **kwargs: Any) -> Any:
        thread = threading.current_thread()
        ae = getattr(getattr(thread, "assoc", None), "ae", None)
        folder: Path | None = getattr(ae, "incoming_dir", None)
        if folder is not None:
            kwargs.setdefault("dir", folder)
            kwargs.setdefault("prefix", ".recv-")
        return original(*args, **kwargs)

    setattr(named_temporary_file, _MARK, True)
    _dimse_messages.NamedTemporaryFile = named_temporary_file  # type: ignore[attr-defined]


def take_streamed_dataset(request: Any) -> Path | None:
    """The file a C-STORE received on the node's own association as an SCU (a C-GET's
    sub-operation) was streamed to, closed and handed to the caller, who then owns it; None
    when it was not streamed. pynetdicom's SCU-side C-STORE leaves that file open and on disk
    (its storage SCP closes and removes it after the handler; this path does neither)."""
    handle = getattr(request, "_dataset_file", None)
    if handle is None:
        return None
    try:
        if not handle.closed:
            handle.close()
        return Path(handle.name)
    except (AttributeError, OSError):
        return None


def open_dataset_fd(request: Any) -> int | None:
    """The descriptor of the streamed dataset file pynetdicom still holds open for ``request``
    during the handler (it closes the file afterwards), or None where it has none."""
    handle = getattr(request, "_dataset_file", None)
    try:
        return None if handle is None or handle.closed else int(handle.fileno())
    except (AttributeError, ValueError, OSError):
        return None


def register_server(ae: Any, server: Any) -> None:
    """Let ``ae.shutdown()`` stop ``server``, which the node started itself."""
    ae._servers.append(server)


def negotiating_association() -> Association | None:
    """The association whose negotiation is asking, or None when the AE's acceptance settings
    are read from anywhere else."""
    thread = threading.current_thread()
    return thread if isinstance(thread, Association) else None
