"""PeriodicTask: the one timer the completion sweep, retention and the sender run on."""

from __future__ import annotations

import threading
import time

from dicom_node.periodic import PeriodicTask


def test_runs_repeatedly_one_pass_at_a_time_and_stop_waits_for_the_pass() -> None:
    running = 0
    most = 0
    passes = 0
    lock = threading.Lock()

    def slow_pass() -> None:
        nonlocal running, most, passes
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.12)  # longer than the interval: never two at once, missed ticks coalesced
        with lock:
            running -= 1
            passes += 1

    task = PeriodicTask("test", slow_pass, 0.05)
    task.start()
    assert task.running
    time.sleep(0.8)
    task.stop()
    assert not task.running
    assert running == 0, "stop returned while a pass was still under way"
    assert most == 1
    assert 3 <= passes <= 8, passes
    stopped_at = passes
    time.sleep(0.2)
    assert passes == stopped_at, "a pass ran after stop"


def test_a_failing_pass_does_not_stop_the_timer() -> None:
    calls = []

    def failing() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("a pass that fails")

    task = PeriodicTask("failing", failing, 0.05)
    task.start()
    time.sleep(0.4)
    task.stop()
    assert len(calls) >= 3
