"""The shared Prometheus multiprocess folder (dicom_node/metrics_folder.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.metrics_folder import ENV, use_folder


def test_a_starting_process_drops_dead_processes_counts_and_keeps_live_ones(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Roles start at any time beside each other: a new one must not pull a live listener's files
    away (CI once saw a C-STORE fail on its deleted counter file), only a finished run's."""
    monkeypatch.setenv(ENV, str(tmp_path / "metrics"))  # as if this process had chosen the folder already
    folder = tmp_path / "metrics"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for pid in (dead.pid, live.pid, os.getpid()):
            (folder / f"counter_{pid}.db").write_bytes(b"x")
            (folder / f"histogram_{pid}.db").write_bytes(b"x")
        (folder / "gauge_livesum_notapid.db").write_bytes(b"x")
        use_folder(folder)
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            f"{kind}_{pid}.db" for pid in (live.pid, os.getpid()) for kind in ("counter", "histogram"))
        assert os.environ[ENV] == str(folder)
    finally:
        live.kill()
        live.wait()
