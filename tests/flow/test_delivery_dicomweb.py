"""Results and forwards by STOW-RS through the outbox (flow/delivery_dicomweb.py): to Orthanc's
DICOMweb plugin (Debian's orthanc-dicomweb) with Basic sign-in, and to the checking archive
(tests/support/dicomweb_server.py) for the answers Orthanc cannot be made to give: one instance
refused (dead with its reason, the rest delivered), 409, 5xx and a peer that is down (retried)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.config import NodeConfig
from dicom_node.dicomweb.client import DicomwebPeerClient
from dicom_node.flow.delivery import Sender
from dicom_node.flow.outbox import Candidate, Outbox
from dicom_node.storage.index import Index
from dicom_node.tools.orthanc import find_orthanc
from dicom_node.tools.synthetic import write_ct_series
from tests.support.dicomweb_server import DicomwebArchive
from tests.support.peers import start_orthanc

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _candidate(path: Path) -> Candidate:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Candidate("binary", str(path), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), str(ds.SOPInstanceUID))


def _setup(make_config: Callable[..., NodeConfig], tmp_path: Path, dicomweb: dict[str, Any],
           files: list[Path]) -> tuple[Outbox, Sender, Clock]:
    config = make_config(peers=[{"name": "cloud", "dicomweb": dicomweb}],
                         delivery={"retry_base_seconds": 5, "retry_max_seconds": 60, "give_up_after_seconds": 300})
    outbox = Outbox(Index(tmp_path / "index.sqlite"))
    clock = Clock()
    with outbox.index.transaction() as db:
        for path in files:
            Outbox.add(db, 0, "forward:r:1.2.3:v1", _candidate(path).sop_instance_uid, "cloud", [_candidate(path)], clock.now)
    return outbox, Sender(config, outbox, clock=clock), clock


def _states(outbox: Outbox) -> dict[str, tuple[str, str]]:
    return {d["object"]: (d["state"], d["last_error"]) for d in outbox.list()}


@pytest.fixture
def archive() -> Iterator[DicomwebArchive]:
    served = DicomwebArchive()
    yield served
    served.stop()


@pytest.mark.skipif(find_orthanc() is None or not DICOMWEB_PLUGIN.exists(), reason="needs orthanc and orthanc-dicomweb")
def test_a_series_reaches_orthanc_by_stow_rs_with_basic_sign_in(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    orthanc = start_orthanc(tmp_path / "orthanc", extra_config={
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "AuthenticationEnabled": True, "RegisteredUsers": {"ai-node": "orthanc-Pa55"}})
    try:
        (tmp_path / "password").write_text("orthanc-Pa55\n")
        files = write_ct_series(tmp_path / "ct", 12, rows=128, columns=128)
        dicomweb = {"url": f"{orthanc.base_url}/dicom-web", "max_batch_bytes": 100_000,  # 12 x 33 kB: 4+ requests
                    "auth": {"kind": "basic", "user": "ai-node", "password_file": str(tmp_path / "password")}}
        outbox, sender, _ = _setup(make_config, tmp_path, dicomweb, files)
        assert sender.run_once() == 12
        assert {state for state, _ in _states(outbox).values()} == {"delivered"}
        client = DicomwebPeerClient(sender.config.peer("cloud"))
        study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        assert [str(s.StudyInstanceUID) for s in client.search_studies({"StudyInstanceUID": study})] == [study]
        got = {str(ds.SOPInstanceUID): ds for ds in client.iter_study(study)}
        for path in files:  # what Orthanc holds is what was sent
            sent = pydicom.dcmread(path)
            assert got[str(sent.SOPInstanceUID)].PixelData == sent.PixelData
        # A wrong password: 401 will not change by sending again, so the row is dead at once, with why.
        (tmp_path / "password").write_text("wrong")
        more = write_ct_series(tmp_path / "more", 1, rows=32, columns=32, seed=4)
        with outbox.index.transaction() as db:
            Outbox.add(db, 0, "forward:r:9:v1", _candidate(more[0]).sop_instance_uid, "cloud", [_candidate(more[0])], 1000.0)
        assert sender.run_once() == 0
        state, error = _states(outbox)[_candidate(more[0]).sop_instance_uid]
        assert state == "dead" and "HTTP 401" in error
    finally:
        orthanc.stop()


def test_a_refused_instance_is_dead_with_its_reason_and_the_rest_delivered(make_config: Callable[..., NodeConfig],
                                                                            tmp_path: Path, archive: DicomwebArchive) -> None:
    files = write_ct_series(tmp_path / "ct", 4, rows=32, columns=32)
    refused = _candidate(files[2]).sop_instance_uid
    archive.archive.refuse = {refused: 0xA900}
    outbox, sender, _ = _setup(make_config, tmp_path, {"url": archive.url}, files)
    assert sender.run_once() == 3
    states = _states(outbox)
    assert states[refused] == ("dead", "refused by the archive, Failure Reason 0xA900")
    assert [s for uid, (s, _) in states.items() if uid != refused] == ["delivered"] * 3
    assert sorted(archive.archive.stored) == sorted(u for u in states if u != refused)


def test_409_is_dead_and_5xx_or_a_peer_that_is_down_is_retried(make_config: Callable[..., NodeConfig], tmp_path: Path,
                                                                archive: DicomwebArchive) -> None:
    files = write_ct_series(tmp_path / "ct", 2, rows=32, columns=32)
    outbox, sender, clock = _setup(make_config, tmp_path, {"url": archive.url}, files)
    archive.archive.fail_with = 503
    assert sender.run_once() == 0
    assert {s for s, _ in _states(outbox).values()} == {"pending"}
    assert all("HTTP 503" in e for _, e in _states(outbox).values())
    assert sender.run_once() == 0 and len(archive.archive.requests) == 1  # backing off: not tried again yet
    archive.archive.fail_with = 0
    clock.now += 6
    assert sender.run_once() == 2
    # Every instance refused (409): dead, not retried.
    more = write_ct_series(tmp_path / "more", 1, rows=32, columns=32, seed=8)
    archive.archive.refuse = {_candidate(more[0]).sop_instance_uid: 0xC000}
    with outbox.index.transaction() as db:
        Outbox.add(db, 0, "forward:r:2:v1", _candidate(more[0]).sop_instance_uid, "cloud", [_candidate(more[0])], clock.now)
    assert sender.run_once() == 0
    assert _states(outbox)[_candidate(more[0]).sop_instance_uid] == ("dead", "refused by the archive, Failure Reason 0xC000")
    # The archive is down: a failed attempt, kept for later.
    down = write_ct_series(tmp_path / "down", 1, rows=32, columns=32, seed=9)
    archive.stop()
    with outbox.index.transaction() as db:
        Outbox.add(db, 0, "forward:r:3:v1", _candidate(down[0]).sop_instance_uid, "cloud", [_candidate(down[0])], clock.now)
    assert sender.run_once() == 0
    state, error = _states(outbox)[_candidate(down[0]).sop_instance_uid]
    assert state == "pending" and "cannot reach cloud" in error
