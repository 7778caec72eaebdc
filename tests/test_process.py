"""The stop flag shared with worker processes survives a child killed with SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

from dicom_node.process import StopFlag


def _spin(flag: StopFlag) -> None:
    while not flag.wait(0.01):
        pass


def test_a_child_killed_while_waiting_leaves_the_flag_usable() -> None:
    context = multiprocessing.get_context("spawn")
    flag = StopFlag(context)
    child = context.Process(target=_spin, args=(flag,))
    child.start()
    time.sleep(1.0)
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(timeout=10)
    started = time.monotonic()
    assert not flag.is_set() and not flag.wait(0.05)
    flag.set()  # a multiprocessing.Event whose lock the child held would block here for ever
    assert flag.is_set() and flag.wait(1.0)
    assert time.monotonic() - started < 2.0
