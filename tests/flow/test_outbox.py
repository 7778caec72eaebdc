"""The outbox rows alone: queueing, re-queueing by a re-run job, backoff policy, dead letters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.flow.outbox import Candidate, DeliveryState, Outbox, RetryPolicy
from dicom_node.storage.index import Index


@pytest.fixture
def outbox(index_location: Path | str) -> Iterator[Outbox]:
    box = Outbox(Index(index_location))
    yield box
    box.index.close()


CANDIDATE = Candidate("binary", "/results/x/sr-binary.dcm", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.1.2.1", "2.25.1")


def test_a_rerun_job_requeues_its_rows_instead_of_adding_more(outbox: Outbox) -> None:
    with outbox.index.transaction() as db:
        Outbox.add(db, 1, "ct:1.2:v1", "sr", "pacs", [CANDIDATE], now=10)
    outbox.delivered(outbox.due(now=10)[0].id, "binary", now=11)
    with outbox.index.transaction() as db:  # the same job ran again (a lease expired)
        Outbox.add(db, 1, "ct:1.2:v1", "sr", "pacs", [CANDIDATE], now=20)
    rows = outbox.list()
    assert len(rows) == 1 and rows[0]["state"] == "pending" and rows[0]["attempts"] == 0
    assert [d.candidates for d in outbox.due(now=20)] == [(CANDIDATE,)]


def test_backoff_doubles_up_to_the_cap_and_old_failures_are_dead(outbox: Outbox) -> None:
    policy = RetryPolicy(base_seconds=5, max_seconds=60, give_up_after_seconds=100)
    assert [policy.delay(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    with outbox.index.transaction() as db:
        Outbox.add(db, 1, "job", "seg", "pacs", [CANDIDATE], now=0)
    delivery = outbox.due(now=0)[0]
    assert outbox.failed(delivery, "peer down", now=1, policy=policy) is DeliveryState.PENDING
    assert outbox.due(now=5) == [] and len(outbox.due(now=6)) == 1
    delivery = outbox.due(now=6)[0]
    assert outbox.failed(delivery, "peer down", now=100, policy=policy) is DeliveryState.DEAD
    assert outbox.counts() == {"dead": 1}
    assert not outbox.retry(delivery.id + 1, now=200)
    assert outbox.retry(delivery.id, now=200) and outbox.counts() == {"pending": 1}
