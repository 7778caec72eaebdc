"""Routing: completed series -> jobs, once per series version, by the configured routes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError
from dicom_node.index import Index, Outcome, Receipt
from dicom_node.instance import InstanceHeader
from dicom_node.jobs import JobQueue
from dicom_node.routing import matches, route_completed

PEERS = [
    {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
    {"name": "modality", "ae_title": "CT01", "host": "127.0.0.1", "port": 105, "receive": False},
    {"name": "viewer", "ae_title": "VIEWER", "host": "127.0.0.1", "port": 106, "send": False},
]
ROUTES = [
    {"name": "chest-ct", "match": {"modality": "CT", "body_part_examined": ["CHEST", "THORAX"], "min_instances": 2},
     "pipeline": "organs", "destinations": ["sender", "viewer"], "priority": "urgent"},
    {"name": "any-ct", "match": {"modality": "ct", "series_description": "^abd"}, "pipeline": "organs",
     "destinations": ["viewer"]},
]


def header(series: str, sop: str, modality: str = "CT", body_part: str = "CHEST", description: str = "") -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=sop, study_instance_uid="1.2.3",
        series_instance_uid=series, transfer_syntax_uid="1.2.840.10008.1.2.1", patient_id="P", patient_name="N",
        study_date="", study_description="", accession_number="", modality=modality, body_part_examined=body_part,
        series_description=description, series_number=1, instance_number=1,
    )


def store(index: Index, head: InstanceHeader, calling_ae: str, now: float) -> None:
    index.record_instance(head, Path(f"/x/{head.sop_instance_uid}"), 1, Receipt(calling_ae, "AI_NODE", "127.0.0.1", now), Outcome.NEW)


@pytest.fixture
def config(make_config: Callable[..., NodeConfig]) -> NodeConfig:
    return make_config(peers=PEERS, routes=ROUTES, pipelines={"organs": {"kind": "classical"}})


def test_a_completed_series_becomes_jobs_once_per_version(tmp_path: Path, config: NodeConfig) -> None:
    index = Index(tmp_path / "index.sqlite")
    queue = JobQueue(index)
    store(index, header("1.1", "1.1.1"), "PACS", now=0)
    store(index, header("1.1", "1.1.2"), "PACS", now=0)
    assert route_completed(index, config, now=1) == []  # still receiving
    index.complete_stable(100, 10, 30)
    jobs = route_completed(index, config, now=100)
    assert [(j.route, j.destinations, j.priority) for j in jobs] == [("chest-ct", ("pacs", "viewer"), "urgent")]
    assert route_completed(index, config, now=101) == []  # routed already

    store(index, header("1.1", "1.1.3"), "PACS", now=200)  # late instance: version 2
    index.complete_stable(300, 10, 30)
    again = route_completed(index, config, now=300)
    assert [(j.route, j.series_version) for j in again] == [("chest-ct", 2)]
    assert len(queue.list()) == 2


def test_return_to_sender_only_when_the_sender_may_receive(tmp_path: Path, config: NodeConfig) -> None:
    index = Index(tmp_path / "index.sqlite")
    JobQueue(index)
    store(index, header("2.1", "2.1.1"), "CT01", now=0)
    store(index, header("2.1", "2.1.2"), "CT01", now=0)
    index.complete_stable(100, 10, 30)
    jobs = route_completed(index, config, now=100)
    assert [j.destinations for j in jobs] == [("viewer",)]


def test_route_matching_rules(config: NodeConfig) -> None:
    chest, anything = config.routes
    row = {"modality": "CT", "body_part_examined": "thorax", "calling_ae": "PACS", "series_description": "Abdomen 5mm",
           "instance_count": 2}
    assert matches(chest, row) and matches(anything, row)
    assert not matches(chest, {**row, "instance_count": 1})
    assert not matches(chest, {**row, "modality": "MR"})
    assert not matches(anything, {**row, "series_description": "Chest"})


def test_routes_must_name_known_pipelines_and_receiving_peers(make_config: Callable[..., NodeConfig]) -> None:
    with pytest.raises(ConfigError, match="no pipeline named 'nope'"):
        make_config(peers=PEERS, routes=[{"name": "r", "pipeline": "nope"}], pipelines={})
    with pytest.raises(ConfigError, match="peer 'modality' has receive: false"):
        make_config(peers=PEERS, routes=[{"name": "r", "pipeline": "p", "destinations": ["modality"]}],
                    pipelines={"p": {"kind": "classical"}})
    with pytest.raises(ConfigError, match=r"routes\[0\]\.match\.series_description: .*not a valid regular expression"):
        make_config(peers=PEERS, routes=[{"name": "r", "pipeline": "p", "match": {"series_description": "("}}],
                    pipelines={"p": {"kind": "classical"}})
