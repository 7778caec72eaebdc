"""Requests (flow/requests.py, request_runner.py): what a request must name, and a source that is
down or refuses: retried a set number of times, then failed with the peer's answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError
from dicom_node.flow.request_runner import MAX_ATTEMPTS, RequestRunner
from dicom_node.flow.requests import RequestStore, held_studies
from dicom_node.storage.index import Index
from dicom_node.storage.store import InstanceStore
from tests.support.peers import free_port

STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def config(make_config: Callable[..., NodeConfig]) -> NodeConfig:
    return make_config(
        peers=[{"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": free_port(), "query": True},
               {"name": "modality", "ae_title": "CT1", "host": "127.0.0.1", "port": 1},
               {"name": "quiet", "ae_title": "QUIET", "host": "127.0.0.1", "port": 1, "receive": False}],
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline"}],
        pipelines={"baseline": {"kind": "classical"}})


@pytest.fixture
def index(config: NodeConfig) -> Iterator[Index]:
    idx = Index(config.index.location)
    yield idx
    idx.close()


@pytest.mark.parametrize(("fields", "why"), [
    ({}, "its Study Instance UID or its accession number"),
    ({"study_uid": STUDY, "accession": "A1"}, "one of them"),
    ({"study_uid": "1.2.abc"}, "is not a Study Instance UID"),
    ({"study_uid": STUDY, "source": "nobody"}, "no peer named 'nobody'"),
    ({"study_uid": STUDY, "source": "modality"}, "does not have query: true"),
    ({"study_uid": STUDY, "route": "mr"}, "no route named 'mr'"),
    ({"study_uid": STUDY, "pipeline": "other"}, "no pipeline named 'other'"),
    ({"study_uid": STUDY, "route": "ct", "pipeline": "baseline"}, "not both"),
    ({"study_uid": STUDY, "destinations": ["quiet"]}, "receive: false"),
])
def test_a_request_names_what_it_needs(config: NodeConfig, index: Index, fields: dict, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        RequestStore(index).create(config=config, **{"source": "archive", **fields})
    assert RequestStore(index).list() == []


def test_a_source_that_is_down_is_retried_then_the_request_fails_with_why(config: NodeConfig, index: Index) -> None:
    now = [1000.0]
    store = InstanceStore(config.storage.path)
    runner = RequestRunner(config, index, store, clock=lambda: now[0], retry_seconds=30)
    requests = RequestStore(index)
    request_id = requests.create(config=config, source="archive", study_uid=STUDY, route="ct", now=now[0])
    assert held_studies_now(index) == {STUDY}  # the rules leave the study to the request
    for attempt in range(1, MAX_ATTEMPTS):
        runner.run_once()
        request = requests.get(request_id)
        assert request is not None and request["state"] == "retrieving" and request["attempts"] == attempt
        assert "cannot reach archive" in request["detail"]
        runner.run_once()  # not due yet: nothing tried
        assert requests.get(request_id)["attempts"] == attempt  # type: ignore[index]
        now[0] += 31
    runner.run_once()
    final = requests.get(request_id)
    assert final is not None and final["state"] == "failed" and final["detail"].startswith("retrieve: cannot reach archive")
    assert held_studies_now(index) == set()


def held_studies_now(index: Index) -> set[str]:
    with index.transaction() as db:
        return held_studies(db, {STUDY, "1.2.3"})
