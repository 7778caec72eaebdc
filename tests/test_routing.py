"""Routing: completed series -> jobs, once per series version, by the configured routes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError
from dicom_node.index import Index, Outcome, Receipt
from dicom_node.instance import InstanceHeader
from dicom_node.jobs import JobQueue
from dicom_node.routing import matches, route_completed
from dicom_node.service import Node

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


def test_forward_queues_each_instance_once_per_version(tmp_path: Path, make_config: Callable[..., NodeConfig]) -> None:
    from dicom_node.outbox import Outbox

    config = make_config(peers=PEERS, routes=[{"name": "archive", "match": {"modality": "CT"}, "forward": ["pacs", "viewer"]}])
    index = Index(tmp_path / "index.sqlite")
    JobQueue(index)
    outbox = Outbox(index)
    store(index, header("3.1", "3.1.1"), "CT01", now=0)
    store(index, header("3.1", "3.1.2"), "CT01", now=0)
    index.complete_stable(100, 10, 30)
    assert route_completed(index, config, now=100) == []  # forward only: no analysis job
    rows = outbox.list()
    assert sorted((r["peer"], r["object"], r["job_key"]) for r in rows) == [
        (peer, sop, "forward:archive:3.1:v1") for peer in ("pacs", "viewer") for sop in ("3.1.1", "3.1.2")]
    assert {json.loads(r["candidates"])[0]["path"] for r in rows} == {"/x/3.1.1", "/x/3.1.2"}

    store(index, header("3.1", "3.1.3"), "CT01", now=200)  # a late instance re-opens the series
    index.complete_stable(300, 10, 30)
    route_completed(index, config, now=300)
    later = [r for r in outbox.list() if r["job_key"].endswith(":v2")]
    assert sorted((r["peer"], r["object"]) for r in later) == [("pacs", "3.1.3"), ("viewer", "3.1.3")]


def test_a_route_needs_a_pipeline_or_forward_peers_that_receive(make_config: Callable[..., NodeConfig]) -> None:
    with pytest.raises(ConfigError, match="needs a pipeline, peers to forward to, or both"):
        make_config(peers=PEERS, routes=[{"name": "r"}])
    with pytest.raises(ConfigError, match="forward peer 'nobody' is not a peer"):
        make_config(peers=PEERS, routes=[{"name": "r", "forward": ["nobody"]}])
    with pytest.raises(ConfigError, match="peer 'modality' has receive: false"):
        make_config(peers=PEERS, routes=[{"name": "r", "forward": ["modality"]}])


def test_a_series_is_forwarded_to_a_real_peer_byte_for_byte(tmp_path: Path, make_config: Callable[..., NodeConfig],
                                                          start_node: Callable[[NodeConfig], Node]) -> None:
    """DCMTK storescp (+B, bit-preserving) plays the archive; the node forwards what a
    pynetdicom SCU sent it once the series is complete, each dataset unchanged."""
    from dicom_node.synthetic import write_ct_series

    from .conftest import TEST_SCU, dataset_bytes
    from .peers import start_storescp, wait_for
    from .test_scp import send

    archive = start_storescp(tmp_path / "archive", ae_title="ARCHIVE")
    try:
        peers = [{"name": "scu", "ae_title": TEST_SCU, "host": "127.0.0.1", "port": 1, "receive": False},
                 {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive.port, "send": False}]
        config = make_config(peers=peers, routes=[{"name": "archive-all", "forward": ["archive"]}],
                             delivery={"interval_seconds": 0.2})
        node = start_node(config)
        files = write_ct_series(tmp_path / "series", 12, 32, 32, seed=5)
        assert send(node.port, files) == [0] * 12
        received = archive.workdir / "received"
        wait_for(lambda: len(list(received.iterdir())) == 12, 30, "12 forwarded instances at the archive")
        sent = {dataset_bytes(f) for f in files}
        assert {dataset_bytes(f) for f in received.iterdir()} == sent
        wait_for(lambda: '"forwarded"' in (tmp_path / "audit.jsonl").read_text(), 10, "the forward in the audit log")
    finally:
        archive.stop()


def test_a_peer_that_takes_only_uncompressed_gets_the_series_decoded(tmp_path: Path, make_config: Callable[..., NodeConfig],
                                                                    start_node: Callable[[NodeConfig], Node]) -> None:
    """RLE Lossless instances forwarded to a pynetdicom SCP that accepts only Implicit VR Little
    Endian arrive decoded, pixel for pixel, instead of retrying until dead-lettered."""
    import json

    import numpy as np
    from pydicom import dcmread
    from pydicom.uid import ImplicitVRLittleEndian, RLELossless
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage

    from dicom_node.outbox import Outbox
    from dicom_node.synthetic import write_ct_series

    from .peers import wait_for
    from .test_scp import send

    received: list = []

    def on_store(event: object) -> int:
        received.append((event.dataset, event.context.transfer_syntax))  # type: ignore[attr-defined]
        return 0x0000

    scp = AE(ae_title="PLAIN")
    scp.add_supported_context(CTImageStorage, ImplicitVRLittleEndian)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        peers = [{"name": "scu", "ae_title": "TEST_SCU", "host": "127.0.0.1", "port": 1, "receive": False},
                 {"name": "plain", "ae_title": "PLAIN", "host": "127.0.0.1", "port": server.server_address[1], "send": False}]
        config = make_config(peers=peers, routes=[{"name": "to-plain", "forward": ["plain"]}], delivery={"interval_seconds": 0.2})
        node = start_node(config)
        files = write_ct_series(tmp_path / "series", 6, 32, 32, seed=8)
        originals = {}
        for path in files:
            ds = dcmread(path)
            pixels = ds.pixel_array.copy()
            ds.compress(RLELossless, generate_instance_uid=False)
            originals[str(ds.SOPInstanceUID)] = pixels
            ds.save_as(path, enforce_file_format=True)
        assert send(node.port, files) == [0] * 6
        wait_for(lambda: len(received) == 6, 30, "6 decoded instances at the plain peer")
        for ds, syntax in received:
            assert syntax == ImplicitVRLittleEndian
            assert np.array_equal(ds.pixel_array, originals[str(ds.SOPInstanceUID)])
        rows = wait_for(lambda: [r for r in Outbox(node.index).list() if r["state"] == "delivered"] or None, 10,
                        "the deliveries marked delivered")
        assert {row["delivered_variant"] for row in rows} == {"implicit-le"}
        assert all([c["variant"] for c in json.loads(row["candidates"])] == ["original", "explicit-le", "implicit-le"]
                   for row in rows)
    finally:
        server.shutdown()
