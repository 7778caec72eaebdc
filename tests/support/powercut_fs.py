"""A FUSE filesystem that loses, on demand, everything that was not fsynced: a power cut.

Every file and folder lives in memory twice: as it is now, and as it would be found after a
power cut. A file's bytes become durable when the file is fsynced; a folder's entries (names
made, renamed or removed in it) when the folder is fsynced, as POSIX asks and as ext4 and XFS
without their periodic commits would give. ``cut()`` throws the rest away at once: what a
program wrote and renamed into place without those fsyncs is gone, and a file whose name was
made durable but whose bytes never were comes back empty. Harsher than a real journalling
filesystem (which commits metadata every few seconds), which is the point: code that survives
this survives a power cut.

Used by tests/e2e/test_power_cut.py through ``Mount``: the filesystem runs in a process of its own
(mfusepy over Debian's libfuse3); unmounting after a cut drops the kernel's caches so the
processes started next see only what survived.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfusepy import FUSE, FuseOSError, Operations

from .processes import watch


@dataclass(eq=False)
class _Node:
    is_dir: bool
    mode: int
    data: bytearray = field(default_factory=bytearray)
    durable_data: bytes | None = None
    entries: dict[str, _Node] = field(default_factory=dict)
    durable_entries: dict[str, _Node] = field(default_factory=dict)
    mtime: int = field(default_factory=time.time_ns)


class PowerCutFS(Operations):  # type: ignore[misc]
    """The filesystem's operations (mfusepy calls them from its threads; one lock serialises them)."""

    use_ns = True  # times in nanoseconds

    def __init__(self) -> None:
        self.root = _Node(True, stat.S_IFDIR | 0o755)
        self._mutex = threading.RLock()
        self._handles: dict[int, _Node] = {}
        self._next_handle = 1
        self.fsyncs = {"file": 0, "dir": 0}

    # -- the cut ---------------------------------------------------------------------------

    def cut(self) -> None:
        """Lose everything not fsynced (call with nothing running on the mount)."""
        with self._mutex:
            seen: set[int] = set()

            def revert(node: _Node) -> None:
                if id(node) in seen:
                    return
                seen.add(id(node))
                if node.is_dir:
                    node.entries = dict(node.durable_entries)
                    for child in node.entries.values():
                        revert(child)
                else:
                    node.data = bytearray(node.durable_data or b"")

            revert(self.root)
            self._handles.clear()

    # -- paths and handles -----------------------------------------------------------------

    def _lookup(self, path: str) -> _Node:
        node = self.root
        for part in (p for p in path.split("/") if p):
            if not node.is_dir or part not in node.entries:
                raise FuseOSError(errno.ENOENT)
            node = node.entries[part]
        return node

    def _parent(self, path: str) -> tuple[_Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if not parent.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return parent, name

    def _handle(self, node: _Node) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = node
        return handle

    def _node(self, path: str, fh: int | None) -> _Node:
        if fh is not None and fh in self._handles:
            return self._handles[fh]
        return self._lookup(path)

    # -- operations ------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            node = self._node(path, fh)
            size = 4096 if node.is_dir else len(node.data)
            return {"st_mode": node.mode, "st_nlink": 2 if node.is_dir else 1, "st_size": size,
                    "st_uid": os.getuid(), "st_gid": os.getgid(), "st_mtime": node.mtime, "st_ctime": node.mtime,
                    "st_atime": node.mtime, "st_blocks": (size + 511) // 512}

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._mutex:
            return [".", "..", *self._lookup(path).entries]

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            if name in parent.entries:
                raise FuseOSError(errno.EEXIST)
            parent.entries[name] = _Node(True, stat.S_IFDIR | (mode & 0o7777))
            parent.mtime = time.time_ns()
            return 0

    def rmdir(self, path: str) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            node = self._lookup(path)
            if node.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
            return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                node = parent.entries[name] = _Node(False, stat.S_IFREG | (mode & 0o7777))
            else:
                node.data = bytearray()
            return self._handle(node)

    def open(self, path: str, flags: int) -> int:
        with self._mutex:
            node = self._lookup(path)
            if flags & os.O_TRUNC:
                node.data = bytearray()
            return self._handle(node)

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            self._handles.pop(fh, None)
            return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            return bytes(self._node(path, fh).data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            node = self._node(path, fh)
            if offset > len(node.data):
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset:offset + len(data)] = data
            node.mtime = time.time_ns()
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mutex:
            node = self._node(path, fh)
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(bytes(length - len(node.data)))
            return 0

    def unlink(self, path: str) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            if name not in parent.entries:
                raise FuseOSError(errno.ENOENT)
            del parent.entries[name]
            return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            old_parent, old_name = self._parent(old)
            new_parent, new_name = self._parent(new)
            if old_name not in old_parent.entries:
                raise FuseOSError(errno.ENOENT)
            node = old_parent.entries.pop(old_name)
            new_parent.entries[new_name] = node
            return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            node = self._node(path, fh)
            node.durable_data = bytes(node.data)
            self.fsyncs["file"] += 1
            return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            node = self._lookup(path)
            node.durable_entries = dict(node.entries)
            self.fsyncs["dir"] += 1
            return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._mutex:
            node = self._lookup(path)
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
            return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str, times: Any = None) -> int:
        with self._mutex:
            self._lookup(path).mtime = int(times[1]) if times else time.time_ns()
            return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 24, "f_bfree": 1 << 23, "f_bavail": 1 << 23,
                "f_files": 1 << 20, "f_ffree": 1 << 19, "f_namemax": 255}

    def access(self, path: str, amode: int) -> int:
        with self._mutex:
            self._lookup(path)
            return 0


def serve(mountpoint: Path, ready: Path) -> None:
    """Serve the filesystem until SIGTERM. Each time it is unmounted from outside (the test's cut)
    it loses what was not fsynced and mounts again, writing the count of cuts to ``ready``."""
    import signal

    fs = PowerCutFS()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    cuts = 0
    while True:
        mountpoint.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=_announce, args=(mountpoint, ready, cuts, fs), daemon=True).start()
        FUSE(fs, str(mountpoint), foreground=True, nothreads=False, default_permissions=True)
        if stopping.is_set():
            return
        fs.cut()
        cuts += 1


def _announce(mountpoint: Path, ready: Path, cuts: int, fs: PowerCutFS) -> None:
    deadline = time.monotonic() + 10
    while not os.path.ismount(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.02)
    ready.write_text(f"{cuts} {fs.fsyncs['file']} {fs.fsyncs['dir']}")


class Mount:
    """``PowerCutFS`` at ``mountpoint``, served by a process of its own (a filesystem served from
    the process that uses it deadlocks when that process exits with files open on it)."""

    def __init__(self, mountpoint: Path, workdir: Path) -> None:
        self.mountpoint = mountpoint
        self.ready = workdir / "powercut-fs.ready"
        self.log = workdir / "powercut-fs.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cuts = 0

    def __enter__(self) -> Mount:
        self.ready.unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.powercut_fs", str(self.mountpoint), str(self.ready)],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
        watch(self.proc, log=self.log, name="power-cut filesystem")
        self._wait_mounted(0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, capture_output=True)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            abort_connections()
            self.proc.kill()
            self.proc.wait(timeout=15)

    def _wait_mounted(self, cuts: int) -> None:
        deadline = time.monotonic() + 20
        while not (self.ready.exists() and self.ready.read_text().split(" ")[0] == str(cuts)):
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise OSError(f"the power-cut filesystem did not mount at {self.mountpoint}:\n{self.output()}")
            time.sleep(0.02)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def fsyncs(self) -> tuple[int, int]:
        """(file fsyncs, folder fsyncs) the filesystem had seen at its last mount."""
        _, files, dirs = self.ready.read_text().split(" ")
        return int(files), int(dirs)

    def cut(self) -> None:
        """The power goes (call once every process using the mount is dead): unmount, which
        drops the kernel's caches, lose what was not fsynced, and mount again."""
        done = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True, text=True, check=False)
        if done.returncode != 0:  # something still holds a file there: detach it all the same
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, capture_output=True)
        self.cuts += 1
        self._wait_mounted(self.cuts)


def abort_connections() -> None:
    """Abort every FUSE connection (fusectl), freeing processes stuck on a filesystem that died."""
    connections = Path("/sys/fs/fuse/connections")
    if not any(connections.iterdir()) if connections.exists() else True:
        subprocess.run(["mount", "-t", "fusectl", "none", str(connections)], check=False, capture_output=True)
    for abort in connections.glob("*/abort"):
        try:
            abort.write_text("1")
        except OSError:
            pass


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]))
