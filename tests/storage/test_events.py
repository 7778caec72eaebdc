"""The event stream (storage/events.py): events commit with their transaction or not at all,
and alerts from busy paths are one per kind and source every ten minutes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.config import NodeConfig
from dicom_node.errors import DiskFullError
from dicom_node.service.node import Node
from dicom_node.storage import events
from dicom_node.storage.events import emit, emit_alert
from dicom_node.storage.index import Index, Receipt
from dicom_node.storage.ingest import ingest
from dicom_node.storage.store import InstanceStore
from dicom_node.tools.synthetic import write_ct_series


@pytest.fixture(autouse=True)
def fresh_alerts() -> None:
    events._last_alert.clear()


def test_an_event_commits_with_its_transaction_or_not_at_all(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    try:
        with pytest.raises(RuntimeError):
            with index.transaction() as db:
                emit(db, "job.done", job_id=1, payload={"job": 1})
                raise RuntimeError("the job's own update failed")
        assert index.query("SELECT count(*) AS n FROM events")[0]["n"] == 0
        with index.transaction() as db:
            emit(db, "job.done", job_id=2, payload={"job": 2})
        assert [r["type"] for r in index.query("SELECT type FROM events")] == ["job.done"]
        with pytest.raises(ValueError, match="unknown event type"):
            with index.transaction() as db:
                emit(db, "job.exploded")
    finally:
        index.close()


def test_alerts_are_one_per_source_every_ten_minutes(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    try:
        assert emit_alert(index, "security.alert", "a:10.0.0.1", {"address": "10.0.0.1"}, now=1000.0)
        assert not emit_alert(index, "security.alert", "a:10.0.0.1", {"address": "10.0.0.1"}, now=1100.0)
        assert emit_alert(index, "security.alert", "a:10.0.0.2", {"address": "10.0.0.2"}, now=1100.0)
        assert emit_alert(index, "security.alert", "a:10.0.0.1", {"address": "10.0.0.1"}, now=1601.0)
        assert index.query("SELECT count(*) AS n FROM events")[0]["n"] == 3
    finally:
        index.close()


def test_a_full_disk_and_refused_callers_raise_alerts(make_config: Callable[..., NodeConfig], tmp_path: Path,
                                                       start_node: Callable[[NodeConfig], Node]) -> None:
    node = start_node(make_config())
    for _ in range(3):  # an unknown caller, three times: one alert
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
        assert assoc.is_rejected
    alerts = node.index.query("SELECT payload FROM events WHERE type = 'security.alert'")
    assert len(alerts) == 1 and '"calling_ae": "INTRUDER"' in alerts[0]["payload"]
    files = write_ct_series(tmp_path / "ct", 1, rows=16, columns=16)
    store = InstanceStore(tmp_path / "full", min_free_bytes=2**62)
    copy = store.incoming / "x.part"
    copy.write_bytes(files[0].read_bytes())
    for _ in range(2):
        with pytest.raises(DiskFullError):
            ingest(store, node.index, copy, Receipt("A", "B", "127.0.0.1", 1.0))
    assert [r["type"] for r in node.index.query("SELECT type FROM events WHERE type = 'disk.low'")] == ["disk.low"]
