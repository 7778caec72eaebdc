from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from dicom_node.config import Peer
from dicom_node.errors import PeerError
from dicom_node.net.scu import echo, iter_dicom_candidates, send_files, set_nodelay
from dicom_node.service.node import Node
from dicom_node.tools.synthetic import write_ct_series

from ..conftest import TEST_SCU, free_port


def _peer(port: int, title: str = "AI_NODE") -> Peer:
    return Peer(name="target", ae_title=title, host="127.0.0.1", port=port)


def test_echo_and_unreachable(node: Node) -> None:
    assert echo(TEST_SCU, _peer(node.port)) == 0
    with pytest.raises(PeerError, match="cannot reach target"):
        echo(TEST_SCU, _peer(free_port()), timeout=2)
    with pytest.raises(PeerError, match="rejected the association"):
        echo("STRANGER", _peer(node.port))


def test_send_files_reports_every_file(node: Node, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 5, 32, 32)
    seen = []
    report = send_files(TEST_SCU, _peer(node.port), files, on_result=seen.append)
    assert report.sent == 5 and report.failed == []
    assert [r.path for r in seen] == files


def test_a_syntax_the_peer_refuses_is_reported_not_dropped(tmp_path: Path) -> None:
    """A plain pynetdicom SCP that only takes uncompressed MR: a JPEG 2000 MR file must fail visibly."""
    received = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.AffectedSOPInstanceUID)
        return 0

    scp = AE(ae_title="PICKY")
    scp.add_supported_context(MRImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    scp.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        j2k = Path(get_testdata_file("MR2_J2KR.dcm", download=False))
        [ct] = write_ct_series(tmp_path / "s", 1, 32, 32)
        report = send_files(TEST_SCU, _peer(server.server_address[1], "PICKY"), [j2k, ct])
        assert report.sent == 1
        [failed] = report.failed
        assert failed.path == j2k and "does not accept transfer syntax 1.2.840.10008.1.2.4.90" in failed.reason
        assert len(received) == 1
    finally:
        server.shutdown()


def test_candidates_skip_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.dcm").write_bytes(b"")
    (tmp_path / "a" / ".hidden").write_bytes(b"")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "y").write_bytes(b"")
    assert list(iter_dicom_candidates([tmp_path])) == [tmp_path / "a" / "x.dcm"]


def test_nodelay_is_set_on_outgoing_associations(node: Node) -> None:
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
    set_nodelay(assoc)
    assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assoc.release()
