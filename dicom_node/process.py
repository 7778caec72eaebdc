"""Helpers for the node's child processes (listeners, analysis workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any


def die_with_parent() -> None:
    """A listener must not outlive its supervisor (killed with -9, say): the port would stay
    served with no recovery or sweep behind it. Linux delivers SIGKILL to us when it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                threading.Event().wait(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def name_process(name: str) -> None:
    """Name this process for ``ps``, ``top`` and /proc/PID/comm (15 bytes at most on Linux):
    ``dn-supervisor``, ``dn-listener``, ``dn-worker``, so an operator (and
    scripts/process_footprint.py) tells the node's processes apart. Nothing happens where the
    system offers no way to."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_name = 15
        libc.prctl(pr_set_name, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class StopFlag:
    """A stop signal shared with child processes that survives a child killed with SIGKILL.

    ``multiprocessing.Event`` takes a lock inside ``is_set()`` and ``wait()``: a worker killed
    while holding it leaves the lock taken, and every other process that touches the event
    then blocks for ever. A lock-free shared byte, polled, has no such failure.
    """

    def __init__(self, context: Any) -> None:
        self._value = context.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.05, left))
        return True


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """Stop a child we started (by its own handle, so by its PID): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
