"""The storage folder: where acknowledged instances live, written so a crash never shows half a file.

Layout: ``<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``, named by the UIDs themselves (a
UID that is not digits and dots is refused, never cleaned: two UIDs must never share a path).
Files being received live in ``<root>/.incoming/`` (a dot folder every reader skips) on
the same file system, so making one durable is fsync + rename + fsync of the folder, never a
copy. Start-up removes what a crash left in ``.incoming`` and any ``.*.part`` file.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import Durability
from ..errors import DiskFullError, StoreError
from .header import InstanceHeader, checked_uid

INCOMING_DIR = ".incoming"
SUFFIX = ".dcm"


def fsync_directory(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX needs the folder fsynced too)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_durable_dirs(folder: Path) -> None:
    """Create ``folder`` and any missing parents so that they survive a power cut: the name of
    each folder on the way, from the file system's root down, is made durable by fsyncing the
    folder that holds it. A folder made with mkdir alone (by this process or any other, such as
    the metrics folder's parent) can vanish with everything renamed into it since."""
    folder = folder.absolute()
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder
    while not os.path.ismount(probe) and probe.parent != probe:
        fsync_directory(probe.parent)
        probe = probe.parent


def write_dataset_atomically(ds: Any, path: Path) -> None:
    """Write a dataset the node made (a result, a mapped-back instance) as a Part 10 file that
    is either whole or absent, and durable: a ``.part`` file beside it, fsynced, renamed, and the
    folder fsynced (the new name is durable only then). The caller makes the folder, once, with
    ``make_durable_dirs``."""
    part = path.with_name(f".{path.name}.part")
    ds.save_as(part, enforce_file_format=True)
    with open(part, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(part, path)
    fsync_directory(path.parent)


class InstanceStore:
    """Places received files durably under their study/series/instance path."""

    def __init__(self, root: Path, durability: Durability = Durability.FSYNC, min_free_bytes: int = 0) -> None:
        self.root = root.resolve()
        self.durability = Durability(durability)
        self.min_free_bytes = min_free_bytes
        self.incoming = self.root / INCOMING_DIR
        self._made: set[Path] = set()
        try:
            if self.syncs:
                make_durable_dirs(self.incoming)
            else:
                self.incoming.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create storage folder {self.incoming}: {exc.strerror}") from exc

    @property
    def syncs(self) -> bool:
        return self.durability is Durability.FSYNC

    def path_for(self, header: InstanceHeader) -> Path:
        """Where an instance lives; the same UIDs always give the same path."""
        return (
            self.root
            / checked_uid(header.study_instance_uid)
            / checked_uid(header.series_instance_uid)
            / (checked_uid(header.sop_instance_uid) + SUFFIX)
        )

    def check_free_space(self) -> None:
        """Raise DiskFullError when free space is under the watermark, before anything is written."""
        if self.min_free_bytes <= 0:
            return
        free = shutil.disk_usage(self.root).free
        if free < self.min_free_bytes:
            raise DiskFullError(
                f"free space {free // 2**20} MiB on {self.root} is under the {self.min_free_bytes // 2**20} MiB watermark"
            )

    def _make_dirs(self, folder: Path) -> None:
        """Create ``folder`` and fsync each parent whose entry list changed."""
        if folder in self._made:
            return
        if self.syncs:
            make_durable_dirs(folder)
        else:
            folder.mkdir(parents=True, exist_ok=True)
        if len(self._made) > 10_000:  # a cache of series folders known to exist, not a record
            self._made.clear()
        self._made.add(folder)

    def commit(self, received: Path, header: InstanceHeader, fd: int | None = None) -> Path:
        """Make a fully received file durable at its final path and return that path.

        ``received`` must be in this store's ``.incoming`` folder (same file system), so the
        rename is atomic: readers see the old file or the new one, never a partial one.
        ``fd``, when the caller still holds the file open, saves opening it again to fsync it.
        """
        final = self.path_for(header)
        try:
            if self.syncs:
                if fd is not None:
                    os.fsync(fd)
                else:
                    own = os.open(received, os.O_RDONLY)
                    try:
                        os.fsync(own)
                    finally:
                        os.close(own)
            self._make_dirs(final.parent)
            try:
                os.replace(received, final)
            except FileNotFoundError:
                if not os.path.exists(received):
                    raise
                self._made.discard(final.parent)  # the folder went away under us (deleted by hand)
                self._make_dirs(final.parent)
                os.replace(received, final)
            if self.syncs:
                fsync_directory(final.parent)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk full while storing {final.name}: {exc.strerror}") from exc
            raise StoreError(f"cannot store {final}: {exc.strerror}") from exc
        return final

    def write_bytes(self, data: bytes, header: InstanceHeader) -> Path:
        """Write a whole file from memory (the non-streamed path), atomically and durably."""
        try:
            tmp = self.incoming / f".{checked_uid(header.sop_instance_uid)}.{os.getpid()}.part"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk full while writing {header.sop_instance_uid}: {exc.strerror}") from exc
            raise StoreError(f"cannot write {header.sop_instance_uid}: {exc.strerror}") from exc
        return self.commit(tmp, header)

    def remove_leftovers(self) -> int:
        """Delete what an interrupted receive left behind; return how many files went."""
        removed = 0
        for entry in list(self.incoming.iterdir()):
            if entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
        for dirpath, _dirs, files in os.walk(self.root):
            if Path(dirpath) == self.incoming:
                continue
            for name in files:
                if name.startswith(".") and name.endswith(".part"):
                    (Path(dirpath) / name).unlink(missing_ok=True)
                    removed += 1
        return removed

    def iter_files(self) -> Iterator[Path]:
        """Every stored instance file (hidden files and folders skipped)."""
        for study in sorted(self.root.iterdir()):
            if study.name.startswith(".") or not study.is_dir():
                continue
            for series in sorted(study.iterdir()):
                if series.name.startswith(".") or not series.is_dir():
                    continue
                for item in sorted(series.iterdir()):
                    if item.suffix == SUFFIX and not item.name.startswith("."):
                        yield item
