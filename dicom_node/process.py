"""Helpers for the node's child processes (listeners, analysis workers)."""

from __future__ import annotations

import os
import signal
import threading


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
