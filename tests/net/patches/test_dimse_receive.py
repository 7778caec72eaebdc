"""DIMSE reception: a request is answered or its association aborted, never dropped; PDVs of
two messages in one P-DATA are both read. With the fast paths on and off."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.config import NodeConfig
from dicom_node.net.patches import dimse_receive
from dicom_node.service.node import Node
from dicom_node.tools.synthetic import write_ct_series

from ...conftest import TEST_SCU, dataset_bytes
from ...support.raw_peer import P_DATA_TF, RawSCU, fragment, pdu, pdv, raw_store_request, store_request
from ..test_storage_scp import assert_stored_unchanged

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(params=[True, False], ids=["fast-paths", "pynetdicom-paths"])
def any_node(request: pytest.FixtureRequest, make_config: Callable[..., NodeConfig],
             start_node: Callable[[NodeConfig], Node]) -> Node:
    return start_node(make_config(node={"ae_title": "AI_NODE", "host": "127.0.0.1", "port": 0,
                                        "fast_paths": request.param}))


def _scu(node: Node, max_pdu: int = 16382) -> tuple[RawSCU, int]:
    scu = RawSCU("127.0.0.1", node.port, TEST_SCU, "AI_NODE", [(CT, [EXPLICIT_LE])], max_pdu=max_pdu)
    return scu, scu.accepted[CT][0]


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_message_parts() -> None:
    pdvs = [(1, b"\x03c"), (1, b"\x00d"), (1, b"\x02d"), (1, b"\x03c"), (1, b"\x02d")]
    assert dimse_receive.message_parts(pdvs) == [pdvs[:1], pdvs[1:3], pdvs[3:4], pdvs[4:]]
    assert dimse_receive.message_parts(pdvs[1:2]) == [pdvs[1:2]]


def test_two_messages_in_one_p_data_are_both_served(any_node: Node, tmp_path: Path) -> None:
    """The end of one data set and the whole next request in one P-DATA-TF (PS3.8 9.3.5):
    pynetdicom's decoder returned at the first message's end and lost the second request."""
    first, second = write_ct_series(tmp_path / "s", 2, 16, 16)
    scu, context = _scu(any_node)
    one, two = dataset_bytes(first), dataset_bytes(second)
    scu.send([pdu(P_DATA_TF, pdv(context, 0x03, store_request(1, CT, _uid(first)))),
              pdu(P_DATA_TF, pdv(context, 0x00, one[:100]))])
    scu.send([pdu(P_DATA_TF, pdv(context, 0x02, one[100:]) + pdv(context, 0x03, store_request(2, CT, _uid(second)))
                  + pdv(context, 0x02, two))])
    answers = [scu.read_message().command for _ in range(2)]
    scu.release()
    assert [(int(a.MessageIDBeingRespondedTo), int(a.Status)) for a in answers] == [(1, 0), (2, 0)]
    assert_stored_unchanged(any_node, [first, second])


def test_a_request_without_priority_is_answered(any_node: Node, tmp_path: Path) -> None:
    """Priority is mandatory in a C-STORE-RQ, but says only how soon: stored, answered."""
    [path] = write_ct_series(tmp_path / "s", 1, 16, 16)
    scu, context = _scu(any_node)
    scu.send(fragment(store_request(5, CT, _uid(path), priority=None), dataset_bytes(path), context,
                      scu.peer_max_pdu, random.Random(0)))
    answer = scu.read_message().command
    scu.release()
    assert (int(answer.MessageIDBeingRespondedTo), int(answer.Status)) == (5, 0)
    assert_stored_unchanged(any_node, [path])


@pytest.mark.filterwarnings("ignore:The value length \\(65\\) exceeds")
def test_a_65_character_uid_is_refused_out_loud(any_node: Node, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    [path] = write_ct_series(tmp_path / "s", 1, 16, 16)
    scu, context = _scu(any_node)
    long_uid = "1." + "2" * 63
    scu.send(fragment(raw_store_request(7, CT, long_uid), dataset_bytes(path), context, scu.peer_max_pdu,
                      random.Random(0)))
    answer = scu.read_message().command
    # the association goes on: a good instance after it is stored
    [good] = write_ct_series(tmp_path / "g", 1, 16, 16, seed=3)
    scu.send(fragment(store_request(8, CT, _uid(good)), dataset_bytes(good), context, scu.peer_max_pdu,
                      random.Random(0)))
    after = scu.read_message().command
    scu.release()
    assert int(answer.MessageIDBeingRespondedTo) == 7
    assert int(answer.Status) == 0xC210
    assert "64 characters" in str(answer.ErrorComment)
    assert (int(after.MessageIDBeingRespondedTo), int(after.Status)) == (8, 0)
    refused = [r for r in caplog.records if r.name == "dicom_node.net.patches.dimse_receive"]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR
    line = refused[0].getMessage()
    assert "TEST_SCU@127.0.0.1" in line and "Message ID 7" in line and long_uid in line
    assert any_node.index.instance(long_uid) is None
    assert list(any_node.store.incoming.iterdir()) == []  # the spooled data set is gone
    assert_stored_unchanged(any_node, [good])


def test_a_command_set_over_three_p_data_is_served(any_node: Node, tmp_path: Path) -> None:
    [path] = write_ct_series(tmp_path / "s", 1, 16, 16)
    scu, context = _scu(any_node)
    pdus = fragment(store_request(9, CT, _uid(path)), dataset_bytes(path), context, scu.peer_max_pdu,
                    random.Random(4), mode="split-command")
    assert sum(1 for p in pdus if p[11] & 1) == 3  # three command fragments, one PDU each
    scu.send(pdus)
    answer = scu.read_message().command
    scu.release()
    assert (int(answer.MessageIDBeingRespondedTo), int(answer.Status)) == (9, 0)
    assert_stored_unchanged(any_node, [path])


def test_an_unreadable_command_set_aborts_with_the_peer_named(any_node: Node, caplog: pytest.LogCaptureFixture) -> None:
    from ...support.raw_peer import PeerClosed, raw_command

    scu, context = _scu(any_node)
    scu.send([pdu(P_DATA_TF, pdv(context, 0x03, raw_command([(0x0100, b"\x01\x00"), (0x0110, b"\x05")])))])
    with pytest.raises(PeerClosed):
        scu.read_message()
    scu.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "dicom_node.net.patches.dimse_receive"]
    assert len(lines) == 1 and "TEST_SCU@127.0.0.1" in lines[0] and "aborting the association" in lines[0]


def test_a_sender_that_dies_mid_instance_leaves_no_open_or_stray_file(tmp_path: Path) -> None:
    """A plain pynetdicom storage SCP in a process where the node streams C-STORE data sets to
    files (chunked receive on): a sender that vanishes mid-instance used to leave pynetdicom's
    temporary file open (a ResourceWarning at some later garbage collection) and on disk."""
    import gc
    import tempfile
    import time
    import warnings

    from pynetdicom import AE, evt

    from dicom_node.net.patches import pynetdicom_settings, pynetdicom_tuning

    pynetdicom_settings.configure_listener(False, 60.0)
    pynetdicom_tuning.install_fixes()
    ae = AE(ae_title="PLAIN_SCP")
    ae.add_supported_context(CT, [EXPLICIT_LE])
    ended = []
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_CONN_CLOSE, lambda e: ended.append(1))])
    try:
        before = set(Path(tempfile.gettempdir()).glob("tmp*.dcm"))
        [first] = write_ct_series(tmp_path / "s", 1, 64, 64)
        scu = RawSCU("127.0.0.1", int(server.server_address[1]), "ANYONE", "PLAIN_SCP", [(CT, [EXPLICIT_LE])])
        context = scu.accepted[CT][0]
        scu.send([pdu(P_DATA_TF, pdv(context, 0x03, store_request(1, CT, _uid(first)))),
                  pdu(P_DATA_TF, pdv(context, 0x00, dataset_bytes(first)[:2000]))])
        time.sleep(0.3)
        scu.close()  # gone mid-instance
        deadline = time.monotonic() + 10
        while not ended and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            gc.collect()
        assert set(Path(tempfile.gettempdir()).glob("tmp*.dcm")) - before == set()
    finally:
        ae.shutdown()
