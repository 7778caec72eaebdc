"""A connection that closes before (or without) its A-ASSOCIATE-RQ gives its association slot
back at once.

pynetdicom 3.0.4's acceptor waits for the request with ``dul.receive_pdu(wait=True,
timeout=acse_timeout)``. When the peer closes the connection first, the DUL goes from Sta2 to
Sta1 (AA-5) and hands the association nothing, so the Association thread sleeps out the whole
ACSE timeout (30 s) while ``AE.active_associations`` counts it. Sixteen connect-and-close
connections within 30 s (a port scanner, a load balancer's health check, anyone) left the
node refusing every honest caller with A-ASSOCIATE-RJ "local limit exceeded" for the next 30 s
(found by the listener fuzzing, tests/net/test_fuzz.py; reproduced on a plain pynetdicom AE).

The fix waits in short slices and stops waiting once nothing can come any more: nothing is
queued for the association and the DUL thread has ended (it does once the transport is gone). The same holds for any other
``receive_pdu(wait=True)`` (a release whose peer vanished): None, as for a timeout, at once.
"""

from __future__ import annotations

import time
from typing import Any

from pynetdicom.dul import DULServiceProvider

#: How often a waiting receive looks at the state machine (seconds).
SLICE = 0.05

_original: Any = None


def _nothing_can_come(dul: Any) -> bool:
    """Nothing is queued for the association and the DUL thread ran and has ended (it does once
    the transport is gone). The state machine alone would not do: between taking an event off
    its queue and changing state it reads Sta1 with every queue empty, on a connection that is
    just starting (an acceptor's Evt5, a requestor's A-ASSOCIATE request)."""
    return dul.to_user_queue.empty() and dul.ident is not None and not dul.is_alive()


def _receive_pdu(self: Any, wait: bool = False, timeout: float | None = None) -> Any:
    if not wait:
        return _original(self, wait, timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
        if remaining <= 0:
            return None
        item = _original(self, True, remaining)
        if item is not None:
            return item
        if _nothing_can_come(self):
            return None


def install() -> None:
    """Idempotent; stays installed (a fix, not a fast path)."""
    global _original
    if _original is None:
        _original = DULServiceProvider.receive_pdu
        DULServiceProvider.receive_pdu = _receive_pdu  # type: ignore[method-assign]
