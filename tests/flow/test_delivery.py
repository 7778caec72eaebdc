"""The sender and the outbox, against real pynetdicom SCPs on loopback: the encoding the peer
accepts is chosen per association, failures are retried with backoff, and a delivery that
keeps failing ends dead-lettered; none is dropped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, evt

from dicom_node.config import NodeConfig
from dicom_node.flow.delivery import Sender
from dicom_node.flow.outbox import Candidate, Outbox
from dicom_node.storage.index import Index

from ..conftest import free_port

CT = Path(str(get_testdata_file("CT_small.dcm")))
MR = Path(str(get_testdata_file("MR_small.dcm")))
US_J2K = Path(str(get_testdata_file("US1_J2KR.dcm")))


def candidate(variant: str, path: Path) -> Candidate:
    ds = dcmread(path, stop_before_pixels=True)
    return Candidate(variant, str(path), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), str(ds.SOPInstanceUID))


class Peer:
    """A storage SCP accepting the given transfer syntaxes and answering ``status``."""

    def __init__(self, transfer_syntaxes: list[str], status: int = 0x0000) -> None:
        self.received: list[str] = []
        self.status = status
        self.ae = AE(ae_title="PEER")
        for path in (CT, MR, US_J2K):
            self.ae.add_supported_context(dcmread(path, stop_before_pixels=True).SOPClassUID, transfer_syntaxes)
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self.handle)])
        self.port = int(self.server.server_address[1])

    def handle(self, event: Any) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return self.status

    def stop(self) -> None:
        self.ae.shutdown()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(*args: Any, **kwargs: Any) -> Peer:
        peer = Peer(*args, **kwargs)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup(make_config: Callable[..., NodeConfig], tmp_path: Path, port: int, **delivery: float) -> tuple[Outbox, Sender, Clock]:
    config = make_config(peers=[{"name": "viewer", "ae_title": "PEER", "host": "127.0.0.1", "port": port}],
                         delivery={"retry_base_seconds": 5, "retry_max_seconds": 60, "give_up_after_seconds": 300, **delivery})
    outbox = Outbox(Index(tmp_path / "index.sqlite"))
    clock = Clock()
    return outbox, Sender(config, outbox, clock=clock), clock


def queue(outbox: Outbox, obj: str, candidates: list[Candidate], now: float, job: str = "job-1") -> None:
    with outbox.index.transaction() as db:
        Outbox.add(db, 1, job, obj, "viewer", candidates, now)


def test_the_first_encoding_the_peer_accepts_for_every_object_is_sent(make_config: Callable[..., NodeConfig], tmp_path: Path,
                                                                      peers: Callable[..., Peer]) -> None:
    plain = peers([ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    outbox, sender, clock = setup(make_config, tmp_path, plain.port)
    queue(outbox, "seg", [candidate("binary-jpeg2000", US_J2K), candidate("binary", CT)], clock.now)
    queue(outbox, "sr", [candidate("binary-jpeg2000", MR), candidate("binary", MR)], clock.now)
    assert sender.run_once() == 2
    assert plain.received == [dcmread(CT).SOPInstanceUID, dcmread(MR).SOPInstanceUID]
    assert {(d["object"], d["state"], d["delivered_variant"]) for d in outbox.list()} == \
        {("seg", "delivered", "binary"), ("sr", "delivered", "binary")}


def test_a_peer_that_accepts_jpeg2000_gets_it(make_config: Callable[..., NodeConfig], tmp_path: Path,
                                             peers: Callable[..., Peer]) -> None:
    j2k = peers([JPEG2000Lossless, ExplicitVRLittleEndian])
    outbox, sender, clock = setup(make_config, tmp_path, j2k.port)
    queue(outbox, "seg", [candidate("binary-jpeg2000", US_J2K), candidate("binary", CT)], clock.now)
    assert sender.run_once() == 1
    assert j2k.received == [dcmread(US_J2K).SOPInstanceUID]
    assert outbox.list()[0]["delivered_variant"] == "binary-jpeg2000"


def test_failures_are_retried_with_backoff_then_delivered(make_config: Callable[..., NodeConfig], tmp_path: Path,
                                                         peers: Callable[..., Peer], caplog: pytest.LogCaptureFixture) -> None:
    full = peers([ExplicitVRLittleEndian], status=0xA700)
    outbox, sender, clock = setup(make_config, tmp_path, full.port)
    queue(outbox, "sr", [candidate("binary", MR)], clock.now)
    assert sender.run_once() == 0
    row = outbox.list()[0]
    assert row["state"] == "pending" and row["attempts"] == 1 and "0xA700" in row["last_error"]
    assert row["next_attempt_at"] == clock.now + 5
    assert "retry in 5 s" in caplog.text
    clock.now += 4
    assert sender.run_once() == 0 and len(full.received) == 1  # not due yet
    clock.now += 1
    sender.run_once()
    assert outbox.list()[0]["next_attempt_at"] == clock.now + 10  # doubled
    full.status = 0x0000
    clock.now += 10
    assert sender.run_once() == 1
    assert outbox.list()[0]["state"] == "delivered" and len(full.received) == 3


def test_an_unreachable_peer_keeps_the_delivery_until_it_gives_up(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    outbox, sender, clock = setup(make_config, tmp_path, free_port())
    queue(outbox, "sr", [candidate("binary", MR)], clock.now)
    sender.run_once()
    row = outbox.list()[0]
    assert row["state"] == "pending" and "cannot reach viewer" in row["last_error"]
    clock.now += 301
    sender.run_once()
    row = outbox.list()[0]
    assert row["state"] == "dead" and row["attempts"] == 2
    assert outbox.retry(row["id"], clock.now)
    assert outbox.list()[0]["state"] == "pending"


def test_a_peer_that_accepts_no_offered_encoding_is_a_failed_attempt(make_config: Callable[..., NodeConfig], tmp_path: Path,
                                                                     peers: Callable[..., Peer]) -> None:
    only_j2k = peers([JPEG2000Lossless])
    outbox, sender, clock = setup(make_config, tmp_path, only_j2k.port)
    queue(outbox, "sr", [candidate("binary", MR)], clock.now)
    assert sender.run_once() == 0
    row = outbox.list()[0]
    assert row["state"] == "pending" and "viewer (PEER@127.0.0.1" in row["last_error"]
    assert "accepted none of the encodings offered" in row["last_error"]
