"""Connections that close before their A-ASSOCIATE-RQ give their association slot back at
once (dicom_node/net/patches/acceptor_wait.py), on a plain pynetdicom AE: before the fix each held its
slot for the 30 s ACSE timeout, and an AE with maximum_associations=2 refused an honest caller
after three such connections."""

from __future__ import annotations

import socket
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.net.patches.pynetdicom_tuning import install_fixes

from ...support.peers import wait_for


def test_closed_connections_free_their_slots_at_once() -> None:
    install_fixes()
    scp = AE(ae_title="SCP")
    scp.add_supported_context(Verification)
    scp.maximum_associations = 2
    scp.acse_timeout = 30
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        port = server.server_address[1]
        started = time.monotonic()
        for payload in (b"", b"\x55" * 40, b"\x01\x00\x00\x00\x00\x10"):  # nothing, noise, half a request
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(payload)
        wait_for(lambda: not server.active_associations, 5, "the closed connections' associations to end")
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification)
        # The server may not have accepted the last closed connection yet when the check above
        # ran (it can still be in the listen backlog): an honest caller may be refused for a
        # moment, but must get in well before the 30 s ACSE timeout the slots used to be held for.
        while not (assoc := scu.associate("127.0.0.1", port, ae_title="SCP")).is_established \
                and time.monotonic() - started < 5:
            time.sleep(0.2)
        assert assoc.is_established, "an honest caller was refused for 5 s after three closed connections"
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
    finally:
        server.shutdown()


def test_a_slow_but_honest_requestor_is_still_waited_for() -> None:
    """The acceptor still waits for a request that is on its way (here 1.5 s late)."""
    install_fixes()
    from ...support.fuzz import associate_rq

    scp = AE(ae_title="AI_NODE")
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
            time.sleep(1.5)
            sock.sendall(associate_rq())
            assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC
    finally:
        server.shutdown()
