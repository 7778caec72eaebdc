"""Real DICOM peers as subprocesses on free loopback ports: DCMTK's storescp, Orthanc, and our
own node. Used by the end-to-end tests and by the benchmark scripts (which import it), so both
start peers the same way. Each peer is stopped by the PID it was started with, nothing else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dicom_node.process import stop_process
from dicom_node.tools.orthanc import Orthanc, free_port, wait_for_port
from dicom_node.tools.orthanc import start_orthanc as _start_orthanc
from tests.support.processes import start, watch

__all__ = ["Orthanc", "PeerProcess", "dcmtk_env", "free_port", "start_node", "start_orthanc", "start_storescp",
           "system_binary", "wait_for", "wait_for_port"]


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
        stop_process(self.proc, timeout)


def start_orthanc(workdir: Path, *args: Any, **kwargs: Any) -> Orthanc:
    """Orthanc (tools/orthanc.py) on free loopback ports, watched: a failing test shows its log."""
    orthanc = _start_orthanc(workdir, *args, **kwargs)
    watch(orthanc.proc, log=workdir / "orthanc.log", name="Orthanc")
    return orthanc


def start_storescp(workdir: Path, ae_title: str = "STORESCP", bit_preserving: bool = True) -> PeerProcess:
    """DCMTK storescp writing what it receives to ``workdir/received`` (+B: bytes as received)."""
    out = workdir / "received"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [system_binary("storescp"), "+xa", "-od", str(out), "-aet", ae_title]
    if bit_preserving:
        args.insert(1, "+B")
    proc = start([*args, str(port)], workdir / "storescp.log", name="storescp", env=dcmtk_env()).proc
    wait_for_port(port, proc)
    return PeerProcess("storescp", ae_title, port, proc, workdir)


def start_node(workdir: Path, config: dict[str, Any]) -> PeerProcess:
    """``dicom-node serve`` in a subprocess with ``config`` (its node.port is filled in)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {**config, "node": {**config.get("node", {}), "port": port}}
    path = workdir / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = start([sys.executable, "-m", "dicom_node.cli", "--config", str(path), "serve"], workdir / "node.log",
                 name="dicom-node serve").proc
    wait_for_port(port, proc)
    return PeerProcess("node", config["node"].get("ae_title", "AI_NODE"), port, proc, workdir, extra={"config": path})



def serve_role(config_path: Path, role: str, log: Path, own_session: bool = False) -> subprocess.Popen[bytes]:
    """``dicom-node serve --role ROLE`` in a subprocess logging to ``log``; ``own_session``: a
    process group of its own (a "host" a test can kill whole)."""
    return start([sys.executable, "-m", "dicom_node.cli", "--config", str(config_path), "serve", "--role", role], log,
                 name=f"dicom-node serve --role {role}", start_new_session=own_session).proc


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
