"""Routing: completed series -> jobs, once per series version, by the configured routes."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dicom_node.config import NodeConfig
from dicom_node.config.rules import RuleFacts
from dicom_node.errors import ConfigError
from dicom_node.flow.jobs import JobQueue
from dicom_node.flow.outbox import Outbox
from dicom_node.flow.routing import route_completed
from dicom_node.service.node import Node
from dicom_node.storage.header import InstanceHeader
from dicom_node.storage.index import Index, Outcome, Receipt

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


def test_a_completed_series_becomes_jobs_once_per_version(open_index: Callable[[str], Index],
        tmp_path: Path, config: NodeConfig) -> None:
    index = open_index("index.sqlite")
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


def test_return_to_sender_only_when_the_sender_may_receive(open_index: Callable[[str], Index],
        tmp_path: Path, config: NodeConfig) -> None:
    index = open_index("index.sqlite")
    JobQueue(index)
    Outbox(index)
    store(index, header("2.1", "2.1.1"), "CT01", now=0)
    store(index, header("2.1", "2.1.2"), "CT01", now=0)
    index.complete_stable(100, 10, 30)
    jobs = route_completed(index, config, now=100)
    assert [j.destinations for j in jobs] == [("viewer",)]


def test_the_short_match_form_still_matches_as_it_did(config: NodeConfig) -> None:
    from pydicom.dataset import Dataset

    chest, anything = config.routes
    header = Dataset()
    header.Modality, header.BodyPartExamined, header.SeriesDescription = "CT", "THORAX", "Abdomen 5mm"
    facts = RuleFacts(header, calling_ae="PACS", instances=2)
    assert chest.condition.evaluate(facts).holds and anything.condition.evaluate(facts).holds
    assert chest.condition.evaluate(RuleFacts(header, calling_ae="PACS", instances=1)).reason == "instances is 1, wanted >= 2"
    header.Modality = "MR"
    assert chest.condition.evaluate(facts).reason == "Modality is 'MR', wanted: is one of CT (any case)"
    header.Modality, header.SeriesDescription = "CT", "Chest"
    assert not anything.condition.evaluate(facts).holds


def test_routes_must_name_known_pipelines_and_receiving_peers(make_config: Callable[..., NodeConfig]) -> None:
    with pytest.raises(ConfigError, match="no pipeline named 'nope'"):
        make_config(peers=PEERS, routes=[{"name": "r", "pipeline": "nope"}], pipelines={})
    with pytest.raises(ConfigError, match="peer 'modality' has receive: false"):
        make_config(peers=PEERS, routes=[{"name": "r", "pipeline": "p", "destinations": ["modality"]}],
                    pipelines={"p": {"kind": "classical"}})
    with pytest.raises(ConfigError, match=r"routes\[0\]\.match\.series_description: .*not a valid regular expression"):
        make_config(peers=PEERS, routes=[{"name": "r", "pipeline": "p", "match": {"series_description": "("}}],
                    pipelines={"p": {"kind": "classical"}})


def test_forward_queues_each_instance_once_per_version(open_index: Callable[[str], Index],
        tmp_path: Path, make_config: Callable[..., NodeConfig]) -> None:
    config = make_config(peers=PEERS, routes=[{"name": "archive", "match": {"modality": "CT"}, "forward": ["pacs", "viewer"]}])
    index = open_index("index.sqlite")
    JobQueue(index)
    Outbox(index)
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
    with pytest.raises(ConfigError, match="needs a pipeline, peers to forward to, both, or discard: true"):
        make_config(peers=PEERS, routes=[{"name": "r"}])
    with pytest.raises(ConfigError, match="forward peer 'nobody' is not a peer"):
        make_config(peers=PEERS, routes=[{"name": "r", "forward": ["nobody"]}])
    with pytest.raises(ConfigError, match="peer 'modality' has receive: false"):
        make_config(peers=PEERS, routes=[{"name": "r", "forward": ["modality"]}])


def test_a_series_is_forwarded_to_a_real_peer_byte_for_byte(tmp_path: Path, make_config: Callable[..., NodeConfig],
                                                          start_node: Callable[[NodeConfig], Node]) -> None:
    """DCMTK storescp (+B, bit-preserving) plays the archive; the node forwards what a
    pynetdicom SCU sent it once the series is complete, each dataset unchanged."""
    from dicom_node.tools.synthetic import write_ct_series

    from ..conftest import TEST_SCU, dataset_bytes
    from ..net.test_storage_scp import send
    from ..support.peers import start_storescp, wait_for

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

    from dicom_node.flow.outbox import Outbox
    from dicom_node.tools.synthetic import write_ct_series

    from ..net.test_storage_scp import send
    from ..support.peers import wait_for

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


# -- rules in order: continue, stop, fallback, discard ------------------------------------------

RULES = [
    {"name": "localizers", "when": {"attribute": "SeriesDescription", "regex": "scout|localizer", "ignore_case": True},
     "discard": True},
    {"name": "archive", "match": {"modality": "CT"}, "forward": ["pacs"]},
    {"name": "chest", "when": {"all": [{"attribute": "BodyPartExamined", "one_of": ["CHEST", "THORAX"]},
                                       {"instances": {"min": 2}}]},
     "pipeline": "organs", "destinations": ["viewer"], "on_match": "stop"},
    {"name": "abdomen", "match": {"modality": "CT"}, "pipeline": "organs", "destinations": ["viewer"]},
    {"name": "everything-else", "fallback": True, "forward": ["viewer"]},
]


def routed(index: Index, config: NodeConfig, series: str, description: str, body_part: str, count: int,
           modality: str = "CT") -> tuple[list[str], list[str]]:
    """(routes that queued a job, routes that forwarded) for one new series."""
    for n in range(count):
        store(index, header(series, f"{series}.{n}", modality=modality, body_part=body_part, description=description), "PACS", 0)
    index.complete_stable(100, 10, 30)
    jobs = route_completed(index, config, now=100)
    forwards = sorted({r["job_key"].split(":")[1] for r in Outbox(index).list() if f":{series}:" in r["job_key"]})
    return [j.route for j in jobs], forwards


def test_rules_act_in_order_until_one_stops_and_the_fallback_only_when_none_matched(open_index: Callable[[str], Index],
        
        tmp_path: Path, make_config: Callable[..., NodeConfig], caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(peers=PEERS, routes=RULES, pipelines={"organs": {"kind": "classical"}})
    index = open_index("index.sqlite")
    JobQueue(index)
    Outbox(index)
    # chest: archive continues, chest stops before abdomen
    assert routed(index, config, "5.1", "Thorax 1mm", "CHEST", 2) == (["chest"], ["archive"])
    # one instance: chest's count fails, so abdomen (continue after archive) takes it
    assert routed(index, config, "5.2", "Thorax 1mm", "CHEST", 1) == (["abdomen"], ["archive"])
    # a localizer is discarded: nothing after it acts
    caplog.set_level("INFO", logger="dicom_node.flow")
    assert routed(index, config, "5.3", "Scout", "CHEST", 2) == ([], [])
    assert "Series 5.3 v1 discarded by route localizers" in caplog.text
    # MR: none of the CT rules; the fallback forwards it
    assert routed(index, config, "5.4", "T1", "HEAD", 1, modality="MR") == ([], ["everything-else"])


def test_a_fallback_alone_is_named_when_nothing_matches(open_index: Callable[[str], Index],
        tmp_path: Path, make_config: Callable[..., NodeConfig],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(peers=PEERS, routes=RULES[:4], pipelines={"organs": {"kind": "classical"}})
    index = open_index("index.sqlite")
    JobQueue(index)
    Outbox(index)
    caplog.set_level("INFO", logger="dicom_node.flow")
    assert routed(index, config, "6.1", "T1", "HEAD", 1, modality="MR") == ([], [])
    assert "matched none of the rules" in caplog.text
    assert "abdomen: Modality is 'MR', wanted: is one of CT (any case)" in caplog.text


def test_rule_mistakes_name_the_rule(make_config: Callable[..., NodeConfig]) -> None:
    pipelines = {"organs": {"kind": "classical"}}
    with pytest.raises(ConfigError, match=r"routes\[0\]: .*route bad: when\.any\[1\] \(SliceThickness\): range"):
        make_config(peers=PEERS, pipelines=pipelines, routes=[{"name": "bad", "pipeline": "organs", "when": {
            "any": [{"attribute": "Modality", "equals": "CT"}, {"attribute": "SliceThickness", "range": [5, 1]}]}}])
    with pytest.raises(ConfigError, match="route s: study.required_series needs study.max_wait_seconds"):
        make_config(peers=PEERS, pipelines=pipelines, routes=[{"name": "s", "pipeline": "organs", "trigger": "study",
                                                               "study": {"required_series": [{"attribute": "Modality", "equals": "CT"}]}}])
    with pytest.raises(ConfigError, match="route d: discard takes the series and does nothing with it"):
        make_config(peers=PEERS, pipelines=pipelines, routes=[{"name": "d", "pipeline": "organs", "discard": True}])
    with pytest.raises(ConfigError, match="route t: study: applies to trigger: study only"):
        make_config(peers=PEERS, pipelines=pipelines, routes=[{"name": "t", "pipeline": "organs", "study": {"quiet_seconds": 5}}])


# -- study rules: quiet time, required series, their maximum wait -------------------------------

def study_rule(**study: Any) -> dict[str, Any]:
    return {"name": "study-ct", "trigger": "study", "when": {"attribute": "Modality", "equals": "CT"},
            "pipeline": "organs", "destinations": ["viewer"], "study": study}


def test_a_study_rule_waits_for_the_quiet_study_then_acts_on_its_matching_series(open_index: Callable[[str], Index],
        
        tmp_path: Path, make_config: Callable[..., NodeConfig]) -> None:
    config = make_config(peers=PEERS, routes=[study_rule(quiet_seconds=50)], pipelines={"organs": {"kind": "classical"}})
    index = open_index("index.sqlite")
    JobQueue(index)
    Outbox(index)
    store(index, header("7.1", "7.1.1"), "PACS", 0)
    store(index, header("7.2", "7.2.1", modality="SR"), "PACS", 0)
    index.complete_stable(20, 10, 30)  # both series complete, the study quiet for 20 s only
    assert route_completed(index, config, now=20) == []
    jobs = route_completed(index, config, now=60)
    assert [(j.route, j.series_uid) for j in jobs] == [("study-ct", "7.1")]  # the SR series does not match
    assert route_completed(index, config, now=70) == []  # decided for version 1
    [decision] = index.query("SELECT * FROM study_routes")
    assert (decision["outcome"], decision["reason"]) == ("fired", "quiet for 50 s")


def test_required_series_fire_early_or_at_the_maximum_wait(open_index: Callable[[str], Index],
        tmp_path: Path, make_config: Callable[..., NodeConfig]) -> None:
    required = [{"attribute": "SeriesDescription", "regex": "arterial", "ignore_case": True},
                {"attribute": "SeriesDescription", "regex": "venous", "ignore_case": True}]
    pipelines = {"organs": {"kind": "classical"}}
    for on_timeout, expected in (("process", ["8.1"]), ("discard", [])):
        config = make_config(peers=PEERS, pipelines=pipelines, routes=[
            study_rule(required_series=required, max_wait_seconds=600, on_timeout=on_timeout)])
        index = open_index(f"{on_timeout}.sqlite")
        JobQueue(index)
        Outbox(index)
        store(index, header("8.1", "8.1.1", description="Arterial phase"), "PACS", 0)
        index.complete_stable(20, 10, 30)
        assert route_completed(index, config, now=300) == []  # waiting for the venous phase
        jobs = route_completed(index, config, now=601)
        assert [j.series_uid for j in jobs] == expected
        [decision] = index.query("SELECT outcome, reason FROM study_routes")
        assert decision["outcome"] == ("fired" if on_timeout == "process" else "discarded")
        assert "missing a series with SeriesDescription matches /venous/ (any case)" in decision["reason"]

    config = make_config(peers=PEERS, pipelines=pipelines,
                         routes=[study_rule(required_series=required, max_wait_seconds=600)])
    index = open_index("both.sqlite")
    JobQueue(index)
    Outbox(index)
    store(index, header("9.1", "9.1.1", description="Arterial phase"), "PACS", 0)
    store(index, header("9.2", "9.2.1", description="Venous phase"), "PACS", 10)
    store(index, header("9.3", "9.3.1", description="Delayed"), "PACS", 10)
    index.complete_stable(16, 10, 30)  # 9.1 complete only
    assert route_completed(index, config, now=16) == []
    index.complete_stable(20, 10, 30)  # all three complete; the study is not quiet yet, no matter
    assert sorted(j.series_uid for j in route_completed(index, config, now=20)) == ["9.1", "9.2", "9.3"]


def test_study_rules_stop_and_fallback_per_study(open_index: Callable[[str], Index],
        tmp_path: Path, make_config: Callable[..., NodeConfig]) -> None:
    routes = [
        {**study_rule(quiet_seconds=10), "name": "ct-study", "on_match": "stop"},
        {"name": "also", "trigger": "study", "forward": ["pacs"]},
        {"name": "other", "trigger": "study", "fallback": True, "forward": ["viewer"]},
    ]
    config = make_config(peers=PEERS, routes=routes, pipelines={"organs": {"kind": "classical"}})
    index = open_index("index.sqlite")
    JobQueue(index)
    Outbox(index)
    store(index, header("10.1", "10.1.1"), "PACS", 0)
    store(index, replace(header("11.1", "11.1.1", modality="MR"), study_instance_uid="1.2.4"), "PACS", 0)
    index.complete_stable(100, 10, 30)
    route_completed(index, config, now=100)
    outcomes = {(r["study_uid"], r["route"]): r["outcome"] for r in index.query("SELECT * FROM study_routes")}
    assert outcomes == {("1.2.3", "ct-study"): "fired", ("1.2.3", "also"): "not-reached", ("1.2.3", "other"): "not-reached",
                        ("1.2.4", "ct-study"): "no-match", ("1.2.4", "also"): "fired", ("1.2.4", "other"): "not-needed"}
    assert [r["study_uid"] for r in index.query("SELECT study_uid FROM studies WHERE routed_version = version")] == ["1.2.3", "1.2.4"]


def test_return_to_sender_forwards_the_originals_back_to_the_peer_that_sent_them(open_index: Callable[[str], Index],
        
        tmp_path: Path, make_config: Callable[..., NodeConfig]) -> None:
    config = make_config(peers=PEERS, routes=[{"name": "echo-back", "match": {"modality": "CT"}, "forward": ["sender"]}])
    index = open_index("index.sqlite")
    JobQueue(index)
    outbox = Outbox(index)
    store(index, header("12.1", "12.1.1"), "PACS", now=0)  # PACS may receive: it gets the series back
    store(index, header("12.2", "12.2.1"), "CT01", now=0)  # the modality may not: nothing is sent
    index.complete_stable(100, 10, 30)
    route_completed(index, config, now=100)
    assert [(r["peer"], r["object"]) for r in outbox.list()] == [("pacs", "12.1.1")]
