"""A power cut, simulated (tests/support/powercut_fs.py): `dicom-node serve` keeps its storage, index,
audit trail and results on a filesystem that loses everything not fsynced; senders store
while the power goes at random moments (every process of the node killed, the filesystem's
unsynced writes dropped, mounted again, the node started again). After each cut every instance
the node answered Success for is there byte for byte; at the end every index row has its file,
every series was analysed and its results delivered, none twice. A second run with the
storage's folder fsync removed shows that this test catches it.

Bounded: CUTS cuts of a few seconds each (about two minutes); scripts/power_cut.py runs more.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicom_node.tools.synthetic import write_ct_series

from ..conftest import TEST_SCU, config_dict, dataset_bytes
from ..support import processes
from ..support.external_ai import ExternalAI
from ..support.peers import free_port, wait_for_port
from ..support.powercut_fs import Mount

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse here")]

CUTS, SEED, SENDERS = 20, 20261205, 3

#: `dicom-node serve` with the storage's folder fsync taken out: the defect the test must catch.
_WITHOUT_FOLDER_FSYNC = ("import sys\nimport dicom_node.storage.store as store\nstore.fsync_directory = lambda path: None\n"
                         "from dicom_node.cli import main\nsys.exit(main(sys.argv[1:]))\n")


class PowerCutRun:
    """The node on the mount, its senders, and what it acknowledged."""

    def __init__(self, tmp_path: Path, mount: Mount, pacs: ExternalAI, without_folder_fsync: bool = False) -> None:
        self.tmp_path = tmp_path
        self.mount = mount
        self.var = mount.mountpoint / "var"
        self.port = free_port()
        self.without_folder_fsync = without_folder_fsync
        data = config_dict(
            # The listener in the serving process itself when the folder fsync is patched out (a
            # spawned listener process would import the unpatched module).
            self.var, node={"port": self.port, "workers": 1 if without_folder_fsync else 2},
            peers=[{"name": "scu", "ae_title": TEST_SCU, "host": "127.0.0.1", "port": 1, "receive": False},
                   {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port, "send": False}],
            routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline", "destinations": ["pacs"]}],
            pipelines={"baseline": {"kind": "classical"}}, results={"path": str(self.var / "results")},
            completion={"series_stable_seconds": 0.5, "study_stable_seconds": 1, "sweep_interval_seconds": 0.2},
            jobs={"workers": 1, "poll_seconds": 0.2}, delivery={"interval_seconds": 0.2, "retry_base_seconds": 0.5})
        self.config_path = tmp_path / "node.yaml"  # outside the mount: configuration is not what is tested
        self.config_path.write_text(yaml.safe_dump(data))
        self.acknowledged: dict[str, Path] = {}  # SOP Instance UID -> the file sent
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "node.log"

    def start(self) -> None:
        command = [sys.executable, "-c", _WITHOUT_FOLDER_FSYNC] if self.without_folder_fsync else \
            [sys.executable, "-m", "dicom_node.cli"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*command, "--config", str(self.config_path), "serve"], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        processes.watch(self.proc, log=self.log, name="dicom-node serve (on the power-cut filesystem)")
        try:
            wait_for_port(self.port, self.proc, timeout=60)
        except Exception as exc:
            raise AssertionError(f"the node did not start: {exc}\n{self.output()}") from exc

    def kill(self) -> None:
        """The power goes: every process of the node at once."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""

    def send(self, files: list[Path], stop: threading.Event) -> None:
        """C-STORE each file not yet acknowledged, until done or ``stop``; record each Success."""
        ae = AE(ae_title=TEST_SCU)
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
        previous = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            while not stop.is_set():
                todo = [f for f in files if _uid(f) not in self.acknowledged]
                if not todo:
                    return
                assoc = ae.associate("127.0.0.1", self.port, ae_title="AI_NODE")
                if not assoc.is_established:
                    time.sleep(0.2)
                    continue
                for path in todo:
                    if stop.is_set() or not assoc.is_established:
                        break
                    status = assoc.send_c_store(path)
                    if "Status" in status and int(status.Status) == 0:
                        self.acknowledged[_uid(path)] = path
                if assoc.is_established:
                    assoc.release()
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = previous

    def missing_or_changed(self) -> list[str]:
        """Acknowledged instances not on the mount byte for byte, with why."""
        problems = []
        for uid, source in self.acknowledged.items():
            header = pydicom.dcmread(source, stop_before_pixels=True)
            stored = self.var / "storage" / str(header.StudyInstanceUID) / str(header.SeriesInstanceUID) / f"{uid}.dcm"
            if not stored.exists():
                problems.append(f"{uid}: acknowledged, then lost")
            elif dataset_bytes(stored) != dataset_bytes(source):
                problems.append(f"{uid}: acknowledged, then changed ({stored.stat().st_size} bytes)")
        return problems


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _series(tmp_path: Path, count: int) -> list[list[Path]]:
    return [write_ct_series(tmp_path / "studies" / f"s{n}", 12, 32, 32, seed=n) for n in range(count)]


def _cut_while_storing(run: PowerCutRun, series: list[list[Path]], rng: random.Random) -> None:
    run.start()
    stop = threading.Event()
    pending = [s for s in series if any(_uid(f) not in run.acknowledged for f in s)]
    chosen = rng.sample(pending, min(SENDERS, len(pending))) if pending else []
    threads = [threading.Thread(target=run.send, args=(files, stop), daemon=True) for files in chosen]
    for thread in threads:
        thread.start()
    time.sleep(rng.uniform(0.3, 3.0))  # storing, completing, analysing, delivering: any moment
    run.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    run.mount.cut()


@pytest.mark.timeout(900)
def test_a_power_cut_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    series = _series(tmp_path, 8)
    pacs = ExternalAI("PACS")
    with Mount(tmp_path / "fs", tmp_path) as mount:
        run = PowerCutRun(tmp_path, mount, pacs)
        try:
            for cut in range(CUTS):
                _cut_while_storing(run, series, rng)
                problems = run.missing_or_changed()
                assert not problems, f"after cut {cut + 1}: {problems[:5]}\n--- node log ---\n{run.output()}"
            # Power stays on: everything is sent and analysed, results delivered.
            run.start()
            for files in series:
                run.send(files, threading.Event())
            _wait(lambda: _settled(run), 180, "every series analysed and its results delivered", run)
            index = _read_index(run)
            run.kill()
        finally:
            if run.proc is not None:
                run.kill()
            pacs.stop()
        files_on_mount = {str(p) for p in (run.var / "storage").rglob("*.dcm")}
        final_problems = run.missing_or_changed()
        print(f"\n{CUTS} cuts, {len(run.acknowledged)} instances acknowledged; fsyncs (file, folder) at the last mount: "
              f"{mount.fsyncs()}")
    assert len(run.acknowledged) == sum(len(s) for s in series)
    assert not final_problems, final_problems[:5]
    assert {row["path"] for row in index["instances"]} <= files_on_mount, "an index row without its file"
    assert len(index["instances"]) == len(run.acknowledged)
    # Each series analysed (its latest version done) and each job's results delivered once.
    for series_uid, version in index["series"]:
        assert any(j["series_uid"] == series_uid and j["series_version"] == version and j["state"] in
                   ("done", "not applicable") for j in index["jobs"]), f"series {series_uid} v{version} not analysed"
    assert all(d["state"] == "delivered" for d in index["deliveries"]), index["deliveries"]
    keys = [(d["job_key"], d["object"], d["peer"]) for d in index["deliveries"]]
    assert len(keys) == len(set(keys))
    received: dict[tuple[str, str], set[str]] = {}
    for ds in pacs.received:
        received.setdefault((str(ds.SeriesInstanceUID), str(ds.Modality)), set()).add(str(ds.SOPInstanceUID))
    assert received, "nothing reached the PACS"


def test_the_power_cut_test_catches_a_missing_folder_fsync(tmp_path: Path) -> None:
    """The same run with the storage's folder fsync removed: within a few cuts an acknowledged
    instance is gone (its name was never made durable), and the check says so."""
    rng = random.Random(SEED)
    series = _series(tmp_path, 4)
    pacs = ExternalAI("PACS")
    lost: list[str] = []
    with Mount(tmp_path / "fs", tmp_path) as mount:
        run = PowerCutRun(tmp_path, mount, pacs, without_folder_fsync=True)
        try:
            for _ in range(5):
                _cut_while_storing(run, series, rng)
                lost = run.missing_or_changed()
                if lost:
                    break
        finally:
            if run.proc is not None:
                run.kill()
            pacs.stop()
    assert lost and "acknowledged, then lost" in lost[0], "a missing folder fsync went unnoticed"


def _wait(predicate: Any, timeout: float, what: str, run: PowerCutRun) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    try:
        index = _read_index(run)
        state = {"jobs": [j["state"] for j in index["jobs"]], "deliveries": [d["state"] for d in index["deliveries"]],
                 "series": index["series"]}
    except Exception as exc:  # noqa: BLE001
        state = {"index": str(exc)}
    raise AssertionError(f"timed out after {timeout} s waiting for {what}: {state}\n--- node log ---\n{run.output()}")


def _read_index(run: PowerCutRun) -> dict[str, Any]:
    import sqlite3

    db = sqlite3.connect(f"file:{run.var / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return {"instances": [dict(r) for r in db.execute("SELECT sop_instance_uid, path FROM instances")],
                "series": [(r["series_uid"], r["version"]) for r in db.execute("SELECT series_uid, version FROM series")],
                "jobs": [dict(r) for r in db.execute("SELECT series_uid, series_version, state FROM jobs")],
                "deliveries": [dict(r) for r in db.execute("SELECT job_key, object, peer, state FROM deliveries")]}
    finally:
        db.close()


def _settled(run: PowerCutRun) -> bool:
    try:
        index = _read_index(run)
    except Exception:  # noqa: BLE001 - the node may be writing; look again
        return False
    series_done = all(any(j["series_uid"] == uid and j["series_version"] == version and j["state"] in
                          ("done", "not applicable") for j in index["jobs"]) for uid, version in index["series"])
    return bool(index["series"]) and series_done and bool(index["deliveries"]) and \
        all(d["state"] == "delivered" for d in index["deliveries"])
