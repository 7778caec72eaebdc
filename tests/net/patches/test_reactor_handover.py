"""The send/reactor hand-over: a response is never taken by the association's reactor.

The schedule that lost responses (issue: 30 s stalls, partial series) is made deterministic
here: the requestor's reactor is descheduled right after its checkpoint opens (it runs again
only once a response is queued), and the sending thread is descheduled right after sending
(it looks for its response 50 ms later). Both are schedules a loaded machine produces.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, PatientRootQueryRetrieveInformationModelGet, Verification

from dicom_node.net.patches import reactor_handover
from dicom_node.net.patches.pynetdicom_tuning import install_fixes
from dicom_node.tools.synthetic import write_ct_series


@pytest.fixture
def pacs() -> Iterator[int]:
    """A pynetdicom Storage SCP that answers every C-STORE with Success."""
    ae = AE(ae_title="PACS")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def _with_adverse_schedule(assoc: Any) -> None:
    """Deschedule the reactor after its checkpoint opens until a response is queued (at most
    0.3 s), and the sender for 50 ms between sending and looking for its response."""
    checkpoint = assoc._reactor_checkpoint
    original_wait = checkpoint.wait

    def late_reactor(*args: Any, **kwargs: Any) -> Any:
        result = original_wait(*args, **kwargs)
        if threading.current_thread() is assoc:
            deadline = time.monotonic() + 0.3
            while not assoc.dimse.msg_queue.qsize() and time.monotonic() < deadline:
                time.sleep(0.001)
        return result

    original_get = assoc.dimse.get_msg

    def late_sender(block: bool = False) -> Any:
        if block:
            time.sleep(0.05)
        return original_get(block)

    checkpoint.wait = late_reactor
    assoc.dimse.get_msg = late_sender


def _store_all(port: int, files: list[Path]) -> list[int | None]:
    ae = AE(ae_title="NODE")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.dimse_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    _with_adverse_schedule(assoc)
    statuses: list[int | None] = []
    try:
        for path in files:
            if not assoc.is_established:
                statuses.append(None)
                continue
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def test_every_response_reaches_its_sender(pacs: int, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    install_fixes()
    files = write_ct_series(tmp_path / "s", 6, 16, 16)
    assert _store_all(pacs, files) == [0] * 6
    assert "Received unexpected" not in caplog.text


def test_pynetdicoms_own_handover_loses_a_response_on_that_schedule(pacs: int, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The schedule above is the bug: without the exact hand-over a response is taken by the
    reactor and the sender waits out its DIMSE timeout (this pins the test to the race)."""
    reactor_handover.uninstall()
    try:
        files = write_ct_series(tmp_path / "s", 3, 16, 16)
        statuses = _store_all(pacs, files)
    finally:
        install_fixes()
    assert None in statuses
    assert "Received unexpected C-STORE service message" in caplog.text


def test_a_handler_may_send_on_its_own_association(tmp_path: Path) -> None:
    """C-GET: the SCP's reactor thread itself sends the C-STORE sub-operations; the hand-over
    must let the reactor pass its own pause (it would spin forever otherwise)."""
    install_fixes()
    files = write_ct_series(tmp_path / "s", 3, 16, 16)

    def on_get(event: evt.Event) -> Iterator[Any]:
        yield len(files)
        for path in files:
            yield 0xFF00, dcmread(path)

    scp = AE(ae_title="PACS")
    scp.add_supported_context(PatientRootQueryRetrieveInformationModelGet)
    scp.add_supported_context(CTImageStorage, ExplicitVRLittleEndian, scu_role=True, scp_role=True)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)])
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    try:
        from pynetdicom import build_role

        ae = AE(ae_title="NODE")
        ae.dimse_timeout = 5
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="PACS",
                             ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "PATIENT"
        query.PatientID = "X"
        statuses = [int(status.Status) for status, _ in assoc.send_c_get(query, PatientRootQueryRetrieveInformationModelGet)]
        assoc.release()
    finally:
        server.shutdown()
    assert statuses[-1] == 0x0000
    assert len(received) == 3


def test_an_idle_association_is_released_by_its_own_reactor(pacs: int, caplog: pytest.LogCaptureFixture) -> None:
    """The network-timeout A-RELEASE runs in the reactor thread: it must not wait for itself."""
    install_fixes()
    caplog.set_level(logging.INFO, logger="pynetdicom")
    ae = AE(ae_title="NODE")
    ae.add_requested_context(Verification)
    ae.network_timeout = 0.5
    assoc = ae.associate("127.0.0.1", pacs, ae_title="PACS")
    assoc.network_timeout_response = "A-RELEASE"
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    deadline = time.monotonic() + 10
    while assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_alive()
    assert assoc.is_released
