"""Polling archives that cannot push (``sources:``): each source's query run every interval, and
each study it lists that this source has not handed in before becomes a request (requests.py:
retrieved, then its route or the rules). ``polled_studies`` remembers what each source handed
in, in the same transaction that makes the request, so a study is never taken twice, across
restarts too; a study the archive lists again later (more images) is not taken again either:
ask for it by request."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable

from ..config import NodeConfig, PollSource
from ..errors import ConfigError, IndexError_, PeerError
from ..periodic import PeriodicTask
from ..storage.index import Index
from .requests import RequestStore
from .retrieval import find, query_peer

log = logging.getLogger(__name__)


def poll_once(config: NodeConfig, index: Index, source: PollSource, clock: Callable[[], float] = time.time) -> list[int]:
    """Run ``source``'s query once; return the ids of the requests made for new studies."""
    keys = dict(source.query)
    if "StudyDate" not in keys:
        since = datetime.date.fromtimestamp(clock() - source.lookback_days * 86400)
        keys["StudyDate"] = f"{since:%Y%m%d}-"
    peer = query_peer(config, source.peer)
    found = [str(ds.get("StudyInstanceUID", "")) for ds in find(config, peer, "STUDY", keys)]
    seen = {r["study_uid"] for r in index.query("SELECT study_uid FROM polled_studies WHERE source = ?", (source.peer,))}
    made = []
    for study in dict.fromkeys(u for u in found if u and u not in seen):
        if not (len(study) <= 64 and all(c.isdigit() or c == "." for c in study)):
            log.warning("Polled %s: %r is not a Study Instance UID; skipped", source.peer, study[:80])
            continue
        now = clock()
        with index.transaction() as db:  # the study is claimed and its request made together, or neither
            claimed = db.execute("INSERT INTO polled_studies(source, study_uid, seen_at) VALUES(?, ?, ?) "
                                 "ON CONFLICT(source, study_uid) DO NOTHING RETURNING study_uid",
                                 (source.peer, study, now)).fetchone()
            if claimed is None:
                continue  # another pass took it meanwhile
            request_id = RequestStore.insert(db, study_uid=study, accession="", source=source.peer,
                                             route=source.route or "", pipeline="", destinations=[], origin="poll", now=now)
            db.execute("UPDATE polled_studies SET request_id = ? WHERE source = ? AND study_uid = ?",
                       (request_id, source.peer, study))
        log.info("Polled %s: new study %s -> request %d", source.peer, study, request_id)
        made.append(request_id)
    if made:
        log.info("Polled %s: %d new stud%s of %d listed", source.peer, len(made), "y" if len(made) == 1 else "ies",
                 len(found))
    return made


class Poller:
    """One PeriodicTask per source; a pass that fails (peer down, index busy) logs and waits for
    the next."""

    def __init__(self, config: NodeConfig, index: Index) -> None:
        self.config, self.index = config, index
        self._tasks = [PeriodicTask(f"poll-{n}-{s.peer}", self._pass(s), s.interval_seconds)
                       for n, s in enumerate(config.sources)]

    def _pass(self, source: PollSource) -> Callable[[], None]:
        def run() -> None:
            try:
                poll_once(self.config, self.index, source)
            except (PeerError, ConfigError, IndexError_) as exc:
                log.warning("Polling %s failed, will try at the next interval: %s", source.peer, exc)
        return run

    def start(self) -> None:
        for task in self._tasks:
            task.start()

    def stop(self) -> None:
        for task in self._tasks:
            task.stop()
