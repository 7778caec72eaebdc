"""A throwaway PostgreSQL on loopback, for tests and benchmarks (as orthanc.py is for Orthanc).

``initdb`` and ``postgres`` from the Debian package (``postgresql``), in a fresh folder, on a
free loopback port, with trust authentication for loopback only and its socket in that folder.
When this process is root the server runs as the ``postgres`` user (PostgreSQL refuses root);
the folder is made in the system's temporary directory, which that user can reach (pytest's
own temporary folders are private to root). Stopped with SIGINT (PostgreSQL's fast shutdown),
only the process this module started, by its PID.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def find_binary(name: str) -> str | None:
    """``initdb`` / ``postgres``: on PATH, else in the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalPostgres:
    folder: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        """A libpq URL for the ``postgres`` database as the ``postgres`` user over loopback TCP."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it does not go; the folder is removed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        shutil.rmtree(self.folder, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server (a crash), keeping its data folder for a restart."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def restart(self, timeout: float = 60.0) -> None:
        """Start the server again on the same folder and port (after stop-without-removal or kill)."""
        self.process = _start_server(self.folder, self.port, self.log_path)
        _wait_ready(self, timeout)


def _run_as(user: str | None) -> dict[str, object]:
    return {"user": user} if user else {}


def _start_server(folder: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    postgres = find_binary("postgres")
    if postgres is None:
        raise FileNotFoundError("PostgreSQL is not installed (Debian package postgresql)")
    user = "postgres" if os.geteuid() == 0 else None
    log = open(log_path, "ab")  # noqa: SIM115 - the server's own output, closed with the process
    try:
        return subprocess.Popen(
            [postgres, "-D", str(folder / "data"), "-p", str(port), "-k", str(folder), "-c", "listen_addresses=127.0.0.1",
             "-c", "max_connections=200", "-c", "shared_buffers=64MB"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **_run_as(user))  # type: ignore[call-overload]
    finally:
        log.close()


def _wait_ready(server: LocalPostgres, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited with {server.process.returncode}: {server.log_path.read_text()[-2000:]}")
        try:
            with psycopg.connect(server.url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections within {timeout:.0f} s") from None
            time.sleep(0.1)


def start_postgres(timeout: float = 60.0) -> LocalPostgres:
    """initdb a fresh cluster and start it; returns once it accepts connections."""
    initdb = find_binary("initdb")
    if initdb is None:
        raise FileNotFoundError("PostgreSQL is not installed (Debian package postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="dicom-node-pg-"))
    user = "postgres" if os.geteuid() == 0 else None
    if user:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    log_path = folder / "postgres.log"
    result = subprocess.run([initdb, "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                             "--no-sync", "--locale=C"], capture_output=True, text=True, timeout=120, **_run_as(user))
    if result.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {result.stderr.strip()[-2000:]}")
    port = _free_port()
    server = LocalPostgres(folder, port, _start_server(folder, port, log_path), log_path)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server
