"""The hand-over between a ``send_*()`` call and its association's reactor thread, made exact.

pynetdicom runs each association as a reactor thread that takes DIMSE messages off the queue
(``dimse.get_msg(block=False)``) and serves them. A thread that sends a request and waits for
its response (``send_c_store``, ``send_c_echo``, ``release`` ...) must first stop the reactor,
or the reactor takes the response and drops it ("Received unexpected C-STORE service
message"). pynetdicom's protocol for that::

    sender:   checkpoint.clear(); while not assoc._is_paused: sleep(0.0001)
    reactor:  _is_paused = True; checkpoint.wait(); _is_paused = False; get_msg(block=False)

``_is_paused`` says "the reactor was at its checkpoint at some moment", not "the reactor is
stopped now", and the sender reads it without knowing which moment:

1. After a request, the sender sets the checkpoint; the reactor wakes, but until it runs again
   (it needs the GIL and a core) ``_is_paused`` still says True. A sender that starts its next
   request in that window goes on at once; the reactor then runs one more iteration, and if the
   next response is already queued and the sender has not yet taken it, the reactor takes it.
2. Between ``checkpoint.wait()`` returning on an open checkpoint and ``_is_paused = False``,
   a sender that clears the checkpoint also reads True.

Both are rare (a thread descheduled at the wrong bytecode) and both end the same way: the
sender waits out its DIMSE timeout (30 s) and aborts; the rest of the series is never sent.
The node's own event-driven waits (``pynetdicom_tuning``) made round trips short enough that
a CPU-loaded machine hit it in about 2 of 100 associations.

The fix keeps pynetdicom's code and makes its flag mean what the senders read it as:

* ``ReactorCheckpoint`` replaces the ``threading.Event``: ``wait`` re-checks the flag after a
  wake-up (a clear that came before the reactor ran keeps it parked), and records that the
  reactor is *passing* the checkpoint, under the same lock that ``clear`` takes;
* ``_is_paused`` becomes a property: to any other thread it is True only while the reactor wrote
  True and is not passing (the reactor's own ``_is_paused = False`` ends the pass), or after
  ``kill``; the reactor thread itself (a handler calling ``send_*`` on its own association, the
  network-timeout release) reads what it wrote, as before.
* ``clear`` wakes the reactor's idle wait on the message queue, so a sender does not wait for
  that wait to time out before the reactor reaches its checkpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pynetdicom.association import Association

_WRITTEN = "_dicom_node_is_paused"
_installed: dict[str, Any] = {}


class ReactorCheckpoint:
    """A ``threading.Event`` for one association's reactor that knows whether the reactor is
    parked at it (see the module docstring)."""

    def __init__(self, on_clear: Callable[[], None] | None = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = True
        #: The reactor went through while open and has not yet said it is running again.
        self.passing = False
        self.on_clear = on_clear

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._open = False
        if self.on_clear is not None:
            self.on_clear()

    def wait(self, timeout: float | None = None) -> bool:
        """Block while closed; called by the reactor thread only."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._open, timeout):
                return False
            self.passing = True
            return True


def _get_is_paused(self: Association) -> bool:
    written = bool(self.__dict__.get(_WRITTEN, False))
    checkpoint = self.__dict__.get("_reactor_checkpoint")
    if not isinstance(checkpoint, ReactorCheckpoint) or threading.current_thread() is self:
        return written
    return bool(self.__dict__.get("_kill", False)) or (written and not checkpoint.passing)


def _set_is_paused(self: Association, value: bool) -> None:
    self.__dict__[_WRITTEN] = value
    if not value:
        checkpoint = self.__dict__.get("_reactor_checkpoint")
        if isinstance(checkpoint, ReactorCheckpoint):
            checkpoint.passing = False


def _wake_reactor(assoc: Association) -> Callable[[], None]:
    def wake() -> None:
        dimse = getattr(assoc, "dimse", None)
        messages = getattr(dimse, "msg_queue", None)
        if messages is not None:
            with messages.not_empty:
                messages.not_empty.notify_all()  # Queue.get re-checks, so a spare wake-up is harmless
    return wake


def install() -> None:
    """Give every Association created from now on an exact hand-over (idempotent)."""
    if _installed:
        return
    original_init = Association.__init__

    def __init__(self: Association, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._reactor_checkpoint = ReactorCheckpoint(_wake_reactor(self))  # type: ignore[assignment]

    _installed["__init__"] = original_init
    Association.__init__ = __init__  # type: ignore[method-assign]
    Association._is_paused = property(_get_is_paused, _set_is_paused)  # type: ignore[assignment]


def uninstall() -> None:
    """pynetdicom's own hand-over again, for associations created from now on."""
    if not _installed:
        return
    Association.__init__ = _installed.pop("__init__")  # type: ignore[method-assign]
    del Association._is_paused


def installed() -> bool:
    return bool(_installed)
