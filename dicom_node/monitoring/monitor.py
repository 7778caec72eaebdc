"""The monitoring passes, run by the process that sends results (one per index: the sender
lock): corrections looked for every ``CORRECTIONS_SECONDS``, drift checked every
``monitoring.check_interval_seconds``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..config import NodeConfig
from ..errors import NodeError
from ..periodic import PeriodicTask
from ..storage.index import Index
from . import corrections, drift

log = logging.getLogger(__name__)
CORRECTIONS_SECONDS = 15.0


class Monitor:
    def __init__(self, config: NodeConfig, index: Index, active: Callable[[], bool] = lambda: True) -> None:
        self.config = config
        self.index = index
        self.active = active
        self._seen = 0.0  # received_at of the newest SEG examined
        self._tasks = [PeriodicTask("monitor-corrections", self.corrections_once, CORRECTIONS_SECONDS),
                       PeriodicTask("monitor-drift", self.drift_once, config.monitoring.check_interval_seconds)]

    def corrections_once(self) -> int:
        if not self.active():
            return 0
        try:
            found, self._seen = corrections.scan(self.index, self.config, self._seen)
        except (NodeError, OSError) as exc:
            log.warning("Looking for corrections failed: %s", exc)
            return 0
        return len(found)

    def drift_once(self, now: float | None = None) -> int:
        if not self.active():
            return 0
        try:
            return len(drift.check(self.index, self.config.monitoring, time.time() if now is None else now))
        except (NodeError, OSError) as exc:
            log.warning("The drift check failed: %s", exc)
            return 0

    def start(self) -> None:
        for task in self._tasks:
            task.start()

    def stop(self) -> None:
        for task in self._tasks:
            task.stop()
