"""Real DICOM peers as subprocesses on free loopback ports: DCMTK's storescp, Orthanc, and our
own node. Used by the end-to-end tests and by the benchmark scripts (which import it), so both
start peers the same way. Each peer is stopped by the PID it was started with, nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dcmtk_env() -> dict[str, str]:
    """Debian's DCMTK and Orthanc leave Nagle on unless told: small instances stall ~40 ms."""
    return {**os.environ, "TCP_NODELAY": "1"}


def system_binary(name: str) -> str:
    """A binary from outside the venv (pynetdicom installs look-alikes named storescu etc.)."""
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != venv_bin)
    found = shutil.which(name, path=path + os.pathsep + "/usr/bin" + os.pathsep + "/usr/sbin")
    if found is None:
        raise FileNotFoundError(f"{name} not found outside the venv (apt-get install dcmtk orthanc)")
    return found


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
class PeerProcess:
    """A started peer: its AE title, DICOM port and process."""

    name: str
    ae_title: str
    port: int
    proc: subprocess.Popen[Any]
    workdir: Path
    http_port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)


def start_storescp(workdir: Path, ae_title: str = "STORESCP", bit_preserving: bool = True) -> PeerProcess:
    """DCMTK storescp writing what it receives to ``workdir/received`` (+B: bytes as received)."""
    out = workdir / "received"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [system_binary("storescp"), "+xa", "-od", str(out), "-aet", ae_title]
    if bit_preserving:
        args.insert(1, "+B")
    log = open(workdir / "storescp.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([*args, str(port)], stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env())
    log.close()
    wait_for_port(port, proc)
    return PeerProcess("storescp", ae_title, port, proc, workdir)


def start_orthanc(workdir: Path, ae_title: str = "ORTHANC", modalities: dict[str, list[Any]] | None = None,
                  extra_config: dict[str, Any] | None = None, port: int | None = None) -> PeerProcess:
    """Orthanc with a configuration written here: loopback only, fresh storage, fsync on.
    ``port``: the DICOM port, when a peer's configuration had to name it before the start."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, http_port = port or free_port(), free_port()
    config = {
        "Name": "test-orthanc",
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
    log = open(workdir / "orthanc.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([system_binary("Orthanc"), str(path)], stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env())
    log.close()
    wait_for_port(port, proc)
    wait_for_port(http_port, proc)
    return PeerProcess("orthanc", ae_title, port, proc, workdir, http_port=http_port)


def start_node(workdir: Path, config: dict[str, Any]) -> PeerProcess:
    """``dicom-node serve`` in a subprocess with ``config`` (its node.port is filled in)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {**config, "node": {**config.get("node", {}), "port": port}}
    path = workdir / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(workdir / "node.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(path), "serve"],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_for_port(port, proc)
    return PeerProcess("node", config["node"].get("ae_title", "AI_NODE"), port, proc, workdir, extra={"config": path})


class OrthancRest:
    """The few calls of Orthanc's REST API the tests use (loopback only)."""

    def __init__(self, http_port: int) -> None:
        self.base = f"http://127.0.0.1:{http_port}"

    def call(self, method: str, path: str, body: bytes | dict[str, Any] | None = None) -> Any:
        import urllib.request

        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.base + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - loopback URL built here
            payload = response.read()
        return json.loads(payload) if payload else None

    def upload(self, path: Path) -> dict[str, Any]:
        return dict(self.call("POST", "/instances", path.read_bytes()))

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        found = self.call("POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        if not found:
            return []
        return list(self.call("GET", f"/studies/{found[0]}/series"))

    def instance_file(self, orthanc_id: str) -> bytes:
        import urllib.request

        with urllib.request.urlopen(f"{self.base}/instances/{orthanc_id}/file", timeout=120) as response:  # noqa: S310
            return bytes(response.read())
