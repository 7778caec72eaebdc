"""Retention: stored studies and result files are removed past a configured age, and the oldest
studies first while free space is under a watermark; never a study with work still to do.

A study may go only when it and every series of it are complete and routed at their current
version, and none of its series has a job queued or running or a delivery (forward or result)
still pending. The rows go in one index transaction that checks this again (so a late instance
or a new job wins the race); the files go after the commit, each only if it is still the file
that was planned (same inode) and no index row has claimed it since (the same instance sent
again meanwhile). A crash between the two leaves files without rows: start-up recovery indexes
them again with their old times, and the next pass removes them. Results (the job folders under
``results.path``) go when their job finished long enough ago and none of its deliveries is
pending. Every removal is one audit record.

A PeriodicTask (periodic.py) runs :meth:`Retention.run_once` every ``retention.interval_seconds``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import NodeConfig
from ..errors import IndexError_
from ..periodic import PeriodicTask
from .audit import AuditLog
from .index import Index

log = logging.getLogger(__name__)

DAY = 86400.0

#: A study none of whose work is unfinished (complete, routed, no job or delivery pending).
_SETTLED = """
    s.state = 'complete' AND s.routed_version >= s.version
    AND NOT EXISTS (SELECT 1 FROM series x WHERE x.study_uid = s.study_uid
                    AND (x.state != 'complete' OR x.routed_version < x.version))
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = s.study_uid AND j.state IN ('queued', 'running'))
    AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN jobs j ON j.id = d.job_id
                    WHERE j.study_uid = s.study_uid AND d.state = 'pending')
    AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN series x ON x.study_uid = s.study_uid
                    WHERE d.job_id = 0 AND d.state = 'pending' AND d.job_key LIKE 'forward:%:' || x.series_uid || ':v%')
"""


@dataclass(frozen=True)
class Removal:
    study_uid: str
    reason: str
    instances: int
    bytes: int


class Retention:
    def __init__(self, config: NodeConfig, index: Index, audit: AuditLog | None,
                 clock: Callable[[], float] = time.time,
                 free_bytes: Callable[[], int] | None = None) -> None:
        self.config = config
        self.index = index
        self.audit = audit
        self.clock = clock
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(config.storage.path).free)

    # -- studies -------------------------------------------------------------------------

    def removable_studies(self) -> list[dict]:
        """Settled studies, oldest first (by their last instance received)."""
        return [dict(r) for r in self.index.query(
            f"SELECT s.study_uid, s.last_received_at FROM studies s WHERE {_SETTLED} ORDER BY s.last_received_at")]

    def run_once(self) -> list[Removal]:
        """One pass: studies past the age, then the oldest under the watermark, then results."""
        policy = self.config.retention
        now = self.clock()
        removed: list[Removal] = []
        candidates = self.removable_studies()
        if policy.max_age_days is not None:
            cutoff = now - policy.max_age_days * DAY
            for study in [c for c in candidates if c["last_received_at"] < cutoff]:
                removal = self.remove_study(study["study_uid"], f"older than {policy.max_age_days:g} days", cutoff)
                if removal is not None:
                    removed.append(removal)
        if policy.disk_free_watermark_mb is not None:
            watermark = policy.disk_free_watermark_mb * 2**20
            gone = {r.study_uid for r in removed}
            for study in [c for c in candidates if c["study_uid"] not in gone]:
                free = self.free_bytes()
                if free >= watermark:
                    break
                removal = self.remove_study(study["study_uid"], f"free space {free / 2**20:.0f} MB under the watermark "
                                            f"{policy.disk_free_watermark_mb} MB", None)
                if removal is not None:
                    removed.append(removal)
        if policy.results_max_age_days is not None:
            self.remove_results(now - policy.results_max_age_days * DAY)
        return removed

    def remove_study(self, study_uid: str, reason: str, received_before: float | None) -> Removal | None:
        """Remove one study if it is still settled (and, with ``received_before``, still that old)."""
        with self.index.transaction() as db:
            row = db.execute(f"SELECT s.* FROM studies s WHERE s.study_uid = ? AND {_SETTLED}", (study_uid,)).fetchone()
            if row is None or (received_before is not None and row["last_received_at"] >= received_before):
                return None  # something arrived or was queued since the plan
            files = db.execute("SELECT sop_instance_uid, path, size FROM instances WHERE study_uid = ?", (study_uid,)).fetchall()
            planned = {}
            for f in files:
                try:
                    planned[f["path"]] = (f["sop_instance_uid"], os.stat(f["path"]).st_ino)
                except OSError:
                    planned[f["path"]] = (f["sop_instance_uid"], None)
            db.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM series WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM study_routes WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM studies WHERE study_uid = ?", (study_uid,))
        kept = 0
        for path, (sop_uid, inode) in planned.items():
            try:
                if inode is None or os.stat(path).st_ino != inode or self.index.instance(sop_uid) is not None:
                    kept += 1  # received again meanwhile: that copy is acknowledged and indexed, it stays
                    continue
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("Retention: could not remove %s: %s", path, exc)
        removal = Removal(study_uid, reason, len(files), sum(int(f["size"]) for f in files))
        log.info("Retention removed study %s (%d instance(s), %.1f MB): %s%s", study_uid, removal.instances,
                 removal.bytes / 2**20, reason, f"; {kept} file(s) received again meanwhile kept" if kept else "")
        if self.audit is not None:
            self.audit.write("retention_removed", study_uid=study_uid, instances=removal.instances, bytes=removal.bytes,
                             reason=reason)
        return removal

    # -- results -------------------------------------------------------------------------

    def remove_results(self, finished_before: float) -> int:
        """Remove the result folders of jobs finished before the cutoff with nothing pending."""
        rows = self.index.query(
            """
            SELECT j.id, j.key, j.finished_at, d.candidates FROM jobs j JOIN deliveries d ON d.job_id = j.id
            WHERE j.state IN ('done', 'not applicable', 'dead') AND j.finished_at < ?
              AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.job_id = j.id AND p.state = 'pending')
            """,
            (finished_before,),
        )
        root = Path(self.config.results.path).resolve()
        folders: dict[Path, str] = {}
        for row in rows:
            for candidate in json.loads(row["candidates"]):
                folder = Path(candidate["path"]).resolve().parent
                if root in folder.parents:  # only ever under results.path
                    folders.setdefault(folder, row["key"])
        removed = 0
        for folder, key in folders.items():
            if not folder.exists():
                continue
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
            log.info("Retention removed the results of job %s (%.1f MB)", key, size / 2**20)
            if self.audit is not None:
                self.audit.write("retention_removed_results", job=key, folder=str(folder), bytes=size)
        return removed


class RetentionScheduler:
    """Runs :meth:`Retention.run_once` every ``retention.interval_seconds`` (a PeriodicTask)."""

    def __init__(self, retention: Retention, interval_seconds: float) -> None:
        self.retention = retention
        self.interval_seconds = interval_seconds
        self._task = PeriodicTask("retention", self.run_once, self.interval_seconds)

    def run_once(self) -> None:
        try:
            self.retention.run_once()
        except (IndexError_, OSError) as exc:
            log.error("Retention pass failed, will try again: %s", exc)

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stop()
