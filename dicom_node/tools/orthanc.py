"""Start a local Orthanc (Debian package ``orthanc``) as a PACS on loopback, for the demo and
the tests: a configuration written here (free ports, ``RemoteAccessAllowed: false``, fresh
storage), the process stopped by the PID it was started with, and the few REST calls used.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..process import stop_process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_orthanc() -> str | None:
    """The Orthanc binary, or None when it is not installed."""
    return shutil.which("Orthanc", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/usr/bin")


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


@dataclass
class Orthanc:
    """A running Orthanc: AE title, DICOM and HTTP ports, process, folder."""

    ae_title: str
    port: int
    http_port: int
    proc: subprocess.Popen[Any]
    workdir: Path

    name = "orthanc"  # as the test peers are named (benchmarks report by name)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self, timeout: float = 30.0) -> None:
        stop_process(self.proc, timeout)

    # -- REST ------------------------------------------------------------------------------

    def call(self, method: str, path: str, body: bytes | dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - loopback URL built here
            payload = response.read()
        return json.loads(payload) if payload else None

    def upload(self, path: Path) -> dict[str, Any]:
        return dict(self.call("POST", "/instances", path.read_bytes()))

    def study_id(self, study_uid: str) -> str | None:
        found = self.call("POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        return str(found[0]) if found else None

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        study = self.study_id(study_uid)
        return list(self.call("GET", f"/studies/{study}/series")) if study else []

    def instance_file(self, orthanc_id: str) -> bytes:
        with urllib.request.urlopen(f"{self.base_url}/instances/{orthanc_id}/file", timeout=120) as response:  # noqa: S310
            return bytes(response.read())


def start_orthanc(workdir: Path, ae_title: str = "ORTHANC", modalities: dict[str, list[Any]] | None = None,
                  extra_config: dict[str, Any] | None = None, port: int | None = None,
                  env: dict[str, str] | None = None) -> Orthanc:
    """Orthanc with a configuration written to ``workdir``: loopback only, fresh storage, fsync
    on. ``port``: the DICOM port, when a peer's configuration had to name it before the start."""
    binary = find_orthanc()
    if binary is None:
        raise FileNotFoundError("Orthanc is not installed (Debian package orthanc)")
    workdir.mkdir(parents=True, exist_ok=True)
    port, http_port = port or free_port(), free_port()
    config = {
        "Name": "dicom-node-local-orthanc",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomAet": ae_title,
        "DicomPort": port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomModalities": modalities or {},
        "Plugins": [],
        "StorageCompression": False,
        "SyncStorageArea": True,
        "HttpsCACertificates": "",
    }
    config.update(extra_config or {})
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    log = open(workdir / "orthanc.log", "ab")  # noqa: SIM115 - closed once the child has it
    # Debian's Orthanc leaves Nagle on unless told: small instances stall ~40 ms.
    proc = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT,
                            env=env or {**os.environ, "TCP_NODELAY": "1"})
    log.close()
    try:
        wait_for_port(port, proc)
        wait_for_port(http_port, proc)
    except BaseException as exc:
        proc.kill()
        proc.wait()
        if isinstance(exc, Exception):
            said = (workdir / "orthanc.log").read_text(errors="replace").splitlines()[-40:]
            raise RuntimeError(f"Orthanc did not start ({exc}); the end of {workdir / 'orthanc.log'}:\n"
                               + "\n".join(said)) from exc
        raise
    return Orthanc(ae_title, port, http_port, proc, workdir)
