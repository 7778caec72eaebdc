from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from dicom_node.config import CompletionSection, NodeConfig
from dicom_node.flow.completion import CompletionScheduler, sweep
from dicom_node.service.node import Node
from dicom_node.tools.synthetic import write_ct_series

from ..net.test_storage_scp import send


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _series_state(node: Node) -> tuple[str, int]:
    [study] = node.index.studies()
    [series] = study["series"]
    return series["state"], series["version"]


def test_sweep_is_a_function_of_index_and_clock(node: Node, tmp_path: Path) -> None:
    node.completion.stop()  # drive the sweep by hand with an explicit clock
    files = write_ct_series(tmp_path / "s", 3, 32, 32)
    assert send(node.port, files) == [0, 0, 0]
    timing = CompletionSection(series_stable_seconds=60, study_stable_seconds=120)
    now = time.time()
    assert sweep(node.index, now, timing) == []
    done = sweep(node.index, now + 61, timing)
    assert [d.level for d in done] == ["series"]
    done = sweep(node.index, now + 121, timing)
    assert [d.level for d in done] == ["study"]


def test_series_completes_after_stable_seconds_survives_restart_and_reopens(
    make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node], tmp_path: Path
) -> None:
    config = make_config(completion={"series_stable_seconds": 1.0, "study_stable_seconds": 1.5, "sweep_interval_seconds": 0.1})
    files = write_ct_series(tmp_path / "s", 4, 32, 32)
    node = start_node(config)
    assert send(node.port, files[:3]) == [0, 0, 0]
    assert _series_state(node) == ("receiving", 1)
    node.stop()  # restart in between: the state is in the index

    node = start_node(config)
    assert _wait_for(lambda: _series_state(node) == ("complete", 1), timeout=10)
    assert _wait_for(lambda: node.index.studies()[0]["state"] == "complete", timeout=10)

    # A late instance re-opens the series as version 2, which completes in its turn.
    assert send(node.port, files[3:]) == [0]
    assert _series_state(node) == ("receiving", 2)
    assert _wait_for(lambda: _series_state(node) == ("complete", 2), timeout=10)
    assert node.index.studies()[0]["series"][0]["instance_count"] == 4


def test_scheduler_reports_completions_to_its_listener(node: Node, tmp_path: Path) -> None:
    node.completion.stop()
    seen: list[str] = []
    scheduler = CompletionScheduler(node.index, CompletionSection(series_stable_seconds=0.2, study_stable_seconds=0.3, sweep_interval_seconds=0.05),
                                    on_complete=lambda done: seen.extend(d.level for d in done))
    assert send(node.port, write_ct_series(tmp_path / "s", 1, 32, 32)) == [0]
    scheduler.start()
    try:
        assert _wait_for(lambda: seen == ["series", "study"], timeout=10)
    finally:
        scheduler.stop()
