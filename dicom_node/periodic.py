"""One way to run something every N seconds: the completion sweep, retention and the outbox
sender each hand their pass to a :class:`PeriodicTask`.

apscheduler drives the timer in a background thread, one run at a time: a pass that takes longer
than its interval is not started twice, and runs missed meanwhile are coalesced into one (the
passes are idempotent sweeps over the index, so catching up once is enough). Each pass handles
and logs its own expected failures; anything else apscheduler logs, and the next tick runs again.
"""

from __future__ import annotations

from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler


class PeriodicTask:
    """``action`` every ``seconds`` from :meth:`start` until :meth:`stop` (which waits for a
    pass under way to end)."""

    def __init__(self, name: str, action: Callable[[], object], seconds: float) -> None:
        self.name = name
        self.action = action
        self.seconds = seconds
        self._scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                            "misfire_grace_time": None})

    def start(self) -> None:
        self._scheduler.add_job(self.action, "interval", seconds=self.seconds, id=self.name, name=self.name)
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)
