"""P-DATA-TF PDUs handed straight to DIMSE: used by the listener, and what a peer may send
(command and data set in one PDU, or a broken PDU) handled as pynetdicom handles it."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from dicom_node.net.patches import p_data
from dicom_node.service.node import Node
from dicom_node.tools.synthetic import write_ct_series

from ...conftest import TEST_SCU, dataset_bytes
from ...support.peers import wait_for
from ..test_storage_scp import assert_stored_unchanged, send
from .test_store_messages import CT, request_bytes


def test_listener_reads_p_data_directly(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every P-DATA-TF of a store (a 512x512 instance spans several) takes the direct path;
    the files arrive byte for byte."""
    split: list[int] = []
    original = p_data._split_pdvs

    def splitting(body: memoryview) -> list[tuple[int, memoryview]] | None:
        split.append(len(body))
        return original(body)

    monkeypatch.setattr(p_data, "_split_pdvs", splitting)
    files = write_ct_series(tmp_path / "s", 4, 16, 16) + write_ct_series(tmp_path / "big", 1, 512, 512, seed=7)
    assert send(node.port, files) == [0] * 5
    assert len(split) >= 5 * 2 + 2  # a command and a data PDU each, more for the big one
    assert_stored_unchanged(node, files)


def test_split_pdvs() -> None:
    body = memoryview(struct.pack(">LB", 4, 1) + b"\x03ab" + struct.pack(">LB", 2, 3) + b"\x02")
    assert [(context, bytes(data)) for context, data in p_data._split_pdvs(body) or []] == [(1, b"\x03ab"), (3, b"\x02")]
    assert p_data._split_pdvs(body[:-1]) is None  # the last item runs past the end
    assert p_data._split_pdvs(memoryview(struct.pack(">LB", 1, 1))) is None  # no message control header


def _p_data_tf(*pdvs: tuple[int, bytes]) -> bytes:
    items = b"".join(struct.pack(">LB", len(value) + 1, context) + value for context, value in pdvs)
    return struct.pack(">BBL", 4, 0, len(items)) + items


def _associate(node: Node) -> tuple[Any, int]:
    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
    assert assoc.is_established
    return assoc, assoc.accepted_contexts[0].context_id


def test_command_and_data_set_in_one_pdu(node: Node, tmp_path: Path) -> None:
    """A peer may put the command set and the whole data set in one P-DATA-TF (PS3.8 9.3.5)."""
    [path] = write_ct_series(tmp_path / "s", 1, 16, 16)
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assoc, context = _associate(node)
    try:
        command = request_bytes(AffectedSOPInstanceUID=uid)
        assoc.dul.socket.send(_p_data_tf((context, b"\x03" + command), (context, b"\x02" + dataset_bytes(path))))
        wait_for(lambda: node.index.instance(uid), 10, "the instance sent in one PDU to be stored")
    finally:
        assoc.release()
    assert_stored_unchanged(node, [path])


def test_malformed_p_data_aborts_only_that_association(node: Node, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 2, 16, 16)
    assoc, context = _associate(node)
    command = request_bytes(AffectedSOPInstanceUID="1.2.3.4")
    broken = bytearray(_p_data_tf((context, b"\x03" + command)))
    broken[6:10] = struct.pack(">L", len(broken))  # the PDV claims more than the PDU holds
    assoc.dul.socket.send(bytes(broken))
    wait_for(lambda: not assoc.is_established, 10, "the node to end the broken association")
    assert node.index.instance("1.2.3.4") is None
    assert send(node.port, files) == [0, 0]  # the node still serves
    assert_stored_unchanged(node, files)


def test_pdu_limits_follow_what_this_side_advertised(node: Node) -> None:
    assoc, _ = _associate(node)
    try:
        dul = assoc.dul  # the requestor's side: it advertised pynetdicom's default 16382
        assert p_data.pdu_limit(dul, 4) == assoc.requestor.maximum_length + p_data.P_DATA_MARGIN
        assert p_data.pdu_limit(dul, 1) == p_data.OTHER_PDU_CAP
    finally:
        assoc.release()
    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    unlimited = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE", max_pdu=0)
    try:
        assert p_data.pdu_limit(unlimited.dul, 4) == p_data.UNLIMITED_P_DATA_CAP
    finally:
        unlimited.release()


def test_over_long_p_data_in_an_association_aborts_it_unread(node: Node, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    files = write_ct_series(tmp_path / "s", 1, 16, 16)
    assoc, _ = _associate(node)
    announced = node.config.node.max_pdu_bytes + p_data.P_DATA_MARGIN + 1
    assoc.dul.socket.send(struct.pack(">BBL", 4, 0, announced) + b"\0" * 100)
    wait_for(lambda: not assoc.is_established, 10, "the node to abort the association")
    refused = [r for r in caplog.records if "announcing" in r.getMessage()]
    assert len(refused) == 1 and r"TEST_SCU@127.0.0.1" in refused[0].getMessage()
    assert refused[0].levelname == "ERROR"
    assert send(node.port, files) == [0]


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the node's listener processes)."""
    import subprocess

    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0
    for each in [pid, *map(int, children)]:
        try:
            with open(f"/proc/{each}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        except (FileNotFoundError, StopIteration):
            pass
    return total / 1024


def test_announced_lengths_never_size_a_buffer(tmp_path: Path) -> None:
    """Four connections announce 4 294 967 280-byte P-DATA-TFs before any association (and send
    1 000 bytes of them): each is aborted unread with one ERROR line, the node keeps its memory
    and answers a C-ECHO at once. Before the fix: +1.5 GB while open, +6.8 GB after, C-ECHO failed."""
    import socket
    import time

    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from ...conftest import config_dict
    from ...support.peers import start_node

    config = config_dict(tmp_path)
    config["node"]["workers"] = 2
    peer = start_node(tmp_path / "node", config)
    try:
        def echo_seconds() -> float:
            ae = AE(ae_title="ECHOSCU")
            ae.add_requested_context(Verification)
            started = time.monotonic()
            assoc = ae.associate("127.0.0.1", peer.port, ae_title="AI_NODE")
            assert assoc.is_established
            assert int(assoc.send_c_echo().Status) == 0
            assoc.release()
            return time.monotonic() - started

        echo_seconds()  # both listener processes warm
        echo_seconds()
        before = _tree_rss_mb(peer.proc.pid)
        hostile = []
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", peer.port), timeout=10)
            sock.sendall(struct.pack(">BBL", 4, 0, 4_294_967_280) + b"\0" * 1000)
            hostile.append(sock)
        for sock in hostile:
            assert sock.recv(10)[:1] == b"\x07"  # A-ABORT, before anything else is read
        assert echo_seconds() < 1.0
        assert _tree_rss_mb(peer.proc.pid) - before < 50
        for sock in hostile:
            sock.close()
        assert echo_seconds() < 1.0
        assert _tree_rss_mb(peer.proc.pid) - before < 50
    finally:
        peer.stop()
    log = (tmp_path / "node" / "node.log").read_text()
    assert log.count("announcing 4294967280 bytes") == 4
    assert "Unknown PDU type" not in log


def test_a_peer_trickling_a_pdu_a_byte_at_a_time_is_aborted(make_config: Any, start_node: Any, tmp_path: Path) -> None:
    """Each byte would reset the network timeout (60 s): the PDU's own deadline
    (node.pdu_timeout_seconds, here 1.5 s) ends it, and an honest sender is served meanwhile."""
    import socket
    import time

    from pynetdicom.sop_class import Verification

    from ...support.raw_peer import RawSCU, pdu, pdv, store_request

    node = start_node(make_config(node={"pdu_timeout_seconds": 1.5}))
    scu = RawSCU("127.0.0.1", node.port, TEST_SCU, "AI_NODE", [(CT, [str(ExplicitVRLittleEndian)])])
    context_id, _ = scu.accepted[CT]
    data = pdu(0x04, pdv(context_id, 0x03, store_request(1, CT, "1.2.3.4")))
    sock = scu.connection.sock
    sock.settimeout(0.1)
    started, aborted_at = time.monotonic(), None
    for byte in data:  # one byte every 0.3 s: 20 s for this PDU at that pace
        try:
            sock.sendall(bytes([byte]))
            answer = sock.recv(64)
        except socket.timeout:
            answer = None
        except OSError:
            answer = b""
        if answer is not None:  # A-ABORT (0x07), or the connection closed
            aborted_at = time.monotonic() - started
            assert answer == b"" or answer[0] == 0x07, answer
            break
        if time.monotonic() - started < 0.5:  # meanwhile, an honest sender
            ae = AE(ae_title=TEST_SCU)
            ae.add_requested_context(Verification)
            honest = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
            assert honest.is_established and int(honest.send_c_echo().Status) == 0
            honest.release()
        time.sleep(0.2)
    scu.close()
    assert aborted_at is not None and aborted_at < 4.0, aborted_at
    files = write_ct_series(tmp_path / "after", 1, 16, 16)
    assert send(node.port, files) == [0]
