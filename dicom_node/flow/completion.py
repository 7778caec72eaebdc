"""Study completion: a series (and a study) is complete once nothing new arrived for a while.

DICOM has no "end of study" message, so, like mercure and Orthanc's "stable" studies, the node
waits for a quiet period. The state lives in the index (see index.py), so the sweep is a pure
function of the index and the clock, and a restart simply carries on. A PeriodicTask (periodic.py) runs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..config import CompletionSection
from ..errors import IndexError_
from ..periodic import PeriodicTask
from ..storage.index import Completed, Index

log = logging.getLogger(__name__)


def sweep(index: Index, now: float, timing: CompletionSection) -> list[Completed]:
    """Mark what has been quiet long enough as complete; return it (for logs and routing)."""
    done = index.complete_stable(now, timing.series_stable_seconds, timing.study_stable_seconds)
    for item in done:
        log.info("%s %s complete (version %d)", item.level.capitalize(), item.uid, item.version)
    return done


class CompletionScheduler:
    """Runs :func:`sweep` every ``sweep_interval_seconds`` in a background thread."""

    def __init__(
        self,
        index: Index,
        timing: CompletionSection,
        on_complete: Callable[[list[Completed]], None] | None = None,
        clock: Callable[[], float] = time.time,
        after_sweep: Callable[[float], None] | None = None,
    ) -> None:
        self.index = index
        self.timing = timing
        self.on_complete = on_complete
        self.clock = clock
        #: Runs after every sweep, found something or not (routing: it also catches up on
        #: series completed before a crash and not yet routed).
        self.after_sweep = after_sweep
        self._task = PeriodicTask("completion-sweep", self.run_once, self.timing.sweep_interval_seconds)

    def run_once(self) -> list[Completed]:
        try:
            done = sweep(self.index, self.clock(), self.timing)
        except IndexError_ as exc:
            log.error("Completion sweep failed, will try again: %s", exc)
            return []
        if done and self.on_complete is not None:
            self.on_complete(done)
        if self.after_sweep is not None:
            try:
                self.after_sweep(self.clock())
            except IndexError_ as exc:
                log.error("After-sweep step failed, will try again: %s", exc)
        return done

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stop()
