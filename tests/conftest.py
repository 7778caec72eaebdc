"""Shared fixtures: nodes on free loopback ports, DCMTK's tools, synthetic series."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble

from dicom_node.config import NodeConfig, parse_config
from dicom_node.service.node import Node

from .support import processes
from .support.peers import dcmtk_env, free_port, system_binary  # noqa: F401 - free_port is re-exported to tests


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report carries the output of the processes it started and the commands
    it ran (support/processes.py): CI's log alone says why."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        try:
            report.sections.extend(processes.sections())
        except Exception as exc:  # noqa: BLE001 - the report of the failure itself must survive
            report.sections.append(("process output", f"(not available: {type(exc).__name__}: {exc})"))
    if report.when == "teardown":
        processes.forget_runs()

TEST_SCU = "TEST_SCU"


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, after preamble and file meta."""
    with open(path, "rb") as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        return fp.read()


@contextmanager
def pydicom_values_unchecked() -> Iterator[None]:
    """pydicom's value checks off (reading and writing), as a careless or hostile sender has them."""
    from pydicom import config as pydicom_config

    modes = pydicom_config.settings.reading_validation_mode, pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        pydicom_config.settings.reading_validation_mode, pydicom_config.settings.writing_validation_mode = modes


def with_uids(source: Path, dest: Path, **uids: str) -> Path:
    """A copy of ``source`` with attributes set to any value, valid or not (StudyInstanceUID=...):
    what a careless or hostile sender may put in a dataset. The file meta's SOP Instance UID
    follows the dataset's."""
    from pydicom import dcmread

    with pydicom_values_unchecked():
        ds = dcmread(source)
        for keyword, value in uids.items():
            setattr(ds, keyword, value)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        dest.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dest, enforce_file_format=True)
    return dest


@pytest.fixture(scope="session")
def ohif_dist() -> Path:
    """The OHIF viewer package, fetched once before the tests that need it (npm pack, 3 tries):
    a test never pays for the download inside its own timing, and a registry failure fails the
    test with the registry's words."""
    import time as _time

    from dicom_node.tools.viewer import fetch_ohif

    errors = []
    for attempt in range(3):
        try:
            return fetch_ohif()
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"try {attempt + 1}: {exc}")
            _time.sleep(5 * (attempt + 1))
    pytest.fail("the OHIF package could not be fetched:\n" + "\n".join(errors))


def config_dict(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "node": {"ae_title": "AI_NODE", "host": "127.0.0.1", "port": 0},
        "storage": {"path": str(tmp_path / "storage"), "durability": "fsync", "min_free_mb": 0},
        "index": {"path": str(tmp_path / "index.sqlite")},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "peers": [
            {"name": "scu", "ae_title": TEST_SCU, "host": "127.0.0.1", "port": 1},
            {"name": "storescu", "ae_title": "STORESCU", "host": "127.0.0.1", "port": 1},
            {"name": "echoscu", "ae_title": "ECHOSCU", "host": "127.0.0.1", "port": 1},
        ],
        "completion": {"series_stable_seconds": 1, "study_stable_seconds": 2, "sweep_interval_seconds": 0.2},
        # The web service is tested in test_web.py (and end to end); elsewhere it is one more port.
        "web": {"enabled": False, "port": 0},
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    return data


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., NodeConfig]:
    def make(**overrides: Any) -> NodeConfig:
        return parse_config(config_dict(tmp_path, **overrides), "test-config")

    return make


@pytest.fixture
def start_node() -> Iterator[Callable[[NodeConfig], Node]]:
    """Start nodes in this process on free ports; all are stopped at teardown."""
    started: list[Node] = []

    def start(config: NodeConfig) -> Node:
        node = Node(config)
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def node(make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node]) -> Node:
    return start_node(make_config())


@dataclass(frozen=True)
class Dcmtk:
    storescu: str
    echoscu: str
    storescp: str

    @staticmethod
    def env() -> dict[str, str]:
        return dcmtk_env()


@pytest.fixture(scope="session")
def dcmtk() -> Dcmtk:
    try:
        tools = {name: system_binary(name) for name in ("storescu", "echoscu", "storescp")}
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    print(f"\nDCMTK binaries in use: {tools}")
    return Dcmtk(**tools)  # type: ignore[arg-type]


def dcmtk_reference_datasets(dcmtk: Dcmtk, folder: Path, storescu_args: list[str], files: list[Path]) -> dict[str, bytes]:
    """What DCMTK's own storescp (+B, bit-preserving) receives from the same storescu call.

    storescu re-encodes some files (it drops Data Set Trailing Padding, for one), so "byte for
    byte" is judged against the bytes DCMTK put on the wire, as its own receiver stored them.
    """
    import time

    from pydicom import dcmread

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    scp = processes.start([dcmtk.storescp, "+B", "+xa", "-od", str(folder), "-aet", "AI_NODE", str(port)],
                          folder.parent / f"{folder.name}-storescp.log", name="storescp (reference)", env=dcmtk.env()).proc
    try:
        deadline = time.monotonic() + 10
        while True:  # storescp has no readiness signal: retry the send until it listens
            sent = processes.run([dcmtk.storescu, *storescu_args, "-aec", "AI_NODE", "127.0.0.1", str(port), *map(str, files)],
                                  env=dcmtk.env(), timeout=60)
            if sent.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sent.returncode == 0, f"reference storescp did not receive: {sent.stderr}"
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p) for p in folder.iterdir() if p.is_file()}


# -- the index on both backends -------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One throwaway PostgreSQL for the session (dicom_node/tools/postgres_local.py); each test that
    asks for the postgresql index gets a database of its own in it."""
    from dicom_node.tools.postgres_local import start_postgres

    server = start_postgres()
    watched = processes.watch(server.process, log=server.log_path, name="PostgreSQL")
    yield server
    server.stop()
    processes.unwatch(watched)


def new_postgres_database(server: Any) -> str:
    """A fresh database in ``server``; its URL."""
    import uuid

    import psycopg

    name = f"index_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@127.0.0.1:{server.port}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def index_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's index lives: a SQLite file, or a fresh database in the session's PostgreSQL
    (the index, jobs and outbox tests run on both)."""
    if request.param == "sqlite":
        return tmp_path / "index.sqlite"
    return new_postgres_database(request.getfixturevalue("postgres_server"))


@pytest.fixture(params=["sqlite", "postgresql"])
def open_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    """Opens indexes on one backend: ``open_index("name.sqlite")`` is an Index in a SQLite file
    of that name, or in a fresh PostgreSQL database (routing's tests run on both); all are
    closed at teardown."""
    from dicom_node.storage.index import Index

    opened: list[Index] = []
    server = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None

    def open_one(name: str) -> Index:
        index = Index(tmp_path / name if server is None else new_postgres_database(server))
        opened.append(index)
        return index

    yield open_one
    for index in opened:
        index.close()
