"""Silent and trickling connections hold no association slot (admission.py): from 127.0.0.2,
hundreds of connections that never finish their A-ASSOCIATE-RQ; from 127.0.0.1, an honest
sender served within a second throughout. On the in-process listener (pynetdicom's server
behind the admission room) and on `dicom-node serve` with two listener processes (the
supervisor's hand-off behind it). Bounded: a few hundred sockets, about ten seconds each."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.config import NodeConfig
from dicom_node.net.admission import LOCAL_LIMIT_RJ, Admission
from dicom_node.service.node import Node

from ..conftest import TEST_SCU, config_dict
from ..support.peers import start_node

ATTACKER = "127.0.0.2"


def _a_associate_rq() -> bytes:
    """A real A-ASSOCIATE-RQ (the bytes pynetdicom would send), for trickling."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "ATTACKER"
    primitive.called_ae_title = "AI_NODE"
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16382
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


class Storm:
    """``silent`` connections that send nothing and ``trickling`` ones that send an A-ASSOCIATE-RQ a
    byte every ``interval`` s, all from 127.0.0.2, reconnecting when the node closes them, until
    ``seconds`` have passed."""

    def __init__(self, port: int, silent: int, trickling: int, seconds: float, interval: float = 0.25) -> None:
        self.port, self.silent, self.trickling, self.seconds, self.interval = port, silent, trickling, seconds, interval
        self.request = _a_associate_rq()
        self.connections = 0
        self.closed_by_node = 0
        self.refused = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self) -> socket.socket | None:
        sock = socket.socket()
        sock.bind((ATTACKER, 0))
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        self.connections += 1
        return sock

    def _closed(self, sock: socket.socket) -> bool:
        try:
            data = sock.recv(64)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data.startswith(LOCAL_LIMIT_RJ[:1]) and data:
            self.refused += 1
        else:
            self.closed_by_node += 1
        sock.close()
        return True

    def _run(self) -> None:
        end = time.monotonic() + self.seconds
        held: list[socket.socket | None] = [self._connect() for _ in range(self.silent)]
        trickle: list[tuple[socket.socket | None, int]] = [(self._connect(), 0) for _ in range(self.trickling)]
        while time.monotonic() < end:
            for n, sock in enumerate(held):
                if sock is None or self._closed(sock):
                    held[n] = self._connect()
            for n, (sock, sent) in enumerate(trickle):
                if sock is None or self._closed(sock):
                    trickle[n] = (self._connect(), 0)
                    continue
                if sent < len(self.request) - 1:  # never the last byte
                    try:
                        sock.send(self.request[sent:sent + 1])
                        trickle[n] = (sock, sent + 1)
                    except OSError:
                        pass
            time.sleep(self.interval)
        for sock in [*held, *(s for s, _ in trickle)]:
            if sock is not None:
                sock.close()


def _honest_echoes(port: int, seconds: float) -> list[float]:
    """C-ECHO associations from 127.0.0.1, one after another, each timed from connect to release."""
    times = []
    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        assoc = ae.associate("127.0.0.1", port, ae_title="AI_NODE")
        assert assoc.is_established, "an honest sender was refused during the storm"
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        times.append(time.monotonic() - started)
        time.sleep(0.2)
    return times


def _served_promptly(times: list[float]) -> None:
    """Every honest association was accepted (a starved node refuses them: local limit exceeded)
    and none waited out a silent connection's 10 s request time ahead of it (what an accept loop
    that reads requests itself does). Quiet, they take 0.03-0.4 s; in a full suite run on 2 busy
    cores a median of 1.4 s and a maximum of 1.8 s were seen, so the bound asserted is 5 s: this
    catches starvation, not speed."""
    print(f"\nhonest associations during the storm: {len(times)}, median {sorted(times)[len(times) // 2]:.3f} s, "
          f"max {max(times):.3f} s")
    assert len(times) >= 3, f"only {len(times)} honest associations in 6 s: {times}"
    assert max(times) < 5.0, f"an honest association took {max(times):.2f} s during the storm: {times}"


def _storm_and_serve(port: int, silent: int, trickling: int) -> tuple[Storm, list[float]]:
    storm = Storm(port, silent, trickling, seconds=8)
    storm.thread.start()
    time.sleep(1.0)  # the storm is in place
    times = _honest_echoes(port, 6)
    storm.thread.join(timeout=30)
    assert not storm.thread.is_alive()
    return storm, times


@pytest.mark.parametrize("cap", [0, 8], ids=["no-per-address-cap", "per-address-cap-8"])
def test_the_in_process_listener_serves_an_honest_sender_through_a_storm(
        make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node], cap: int,
        caplog: pytest.LogCaptureFixture) -> None:
    node = start_node(make_config(node={"max_associations": 16, "association_request_seconds": 2.0,
                                        "max_pending_per_address": cap}))
    storm, times = _storm_and_serve(node.port, silent=150, trickling=50)
    assert storm.connections >= 200
    _served_promptly(times)
    if cap:  # most were refused at once, with an A-ASSOCIATE-RJ
        assert storm.refused > 100, (storm.refused, storm.closed_by_node)
    else:  # all waited; the slow ones were closed at the request deadline
        assert storm.closed_by_node >= 150, (storm.refused, storm.closed_by_node)
    assert node.admission is not None
    deadline = time.monotonic() + 10
    while node.admission.waiting and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node.admission.waiting == 0  # every socket the storm left behind is gone


def test_serve_with_two_listener_processes_serves_an_honest_sender_through_a_storm(tmp_path: Path) -> None:
    data = config_dict(tmp_path, node={"ae_title": "AI_NODE", "host": "127.0.0.1", "workers": 2, "max_associations": 16,
                                       "association_request_seconds": 2.0, "max_pending_per_address": 8})
    node = start_node(tmp_path / "node", data)
    try:
        storm, times = _storm_and_serve(node.port, silent=200, trickling=50)
        _served_promptly(times)
        assert storm.refused > 100
    finally:
        node.stop()
    log = (tmp_path / "node" / "node.log").read_text()
    assert "Refused" in log and f"from {ATTACKER}: over node.max_pending_per_address (8 waiting at once)" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_a_request_is_admitted_only_when_whole_and_peeked_bytes_reach_the_listener() -> None:
    """The room alone: a request sent in two halves is handed over only after the second, with
    every byte still to be read; a silent connection is closed at its deadline."""
    admitted: list[tuple[socket.socket, float]] = []
    room = Admission(lambda conn, address, tls: admitted.append((conn, time.monotonic())), request_seconds=1.0,
                     max_pending_per_address=0)
    room.start()
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        request = _a_associate_rq()
        client = socket.create_connection(listener.getsockname())
        conn, address = listener.accept()
        room.offer(conn, address)
        client.sendall(request[:20])
        time.sleep(0.5)
        assert admitted == [] and room.waiting == 1
        sent_at = time.monotonic()
        client.sendall(request[20:])
        deadline = time.monotonic() + 2
        while not admitted and time.monotonic() < deadline:
            time.sleep(0.01)
        [(handed, at)] = admitted
        assert at - sent_at < 0.5
        handed.settimeout(2)
        received = b""
        while len(received) < len(request):
            received += handed.recv(65536)
        assert received == request and struct.unpack(">L", received[2:6])[0] == len(request) - 6
        handed.close()
        client.close()

        silent = socket.create_connection(listener.getsockname())
        conn, address = listener.accept()
        room.offer(conn, address)
        silent.settimeout(3)
        started = time.monotonic()
        assert silent.recv(10) == b""  # closed by the room
        assert 0.7 < time.monotonic() - started < 2.5
        assert room.waiting == 0 and len(admitted) == 1
        silent.close()
    finally:
        room.stop()
        listener.close()


def test_a_request_that_came_whole_while_the_room_was_busy_is_admitted_at_its_deadline() -> None:
    """The room's thread can be late (a storm of other connections on a starved CPU: seen in CI,
    where an honest sender on loopback was closed after 2 s with its request whole in the
    buffer). At the deadline a whole request is admitted; a partial one is still closed. The
    room's steps are called here one by one, with the clock moved past the deadline."""
    admitted: list[socket.socket] = []
    now = [100.0]
    room = Admission(lambda conn, address, tls: admitted.append(conn), request_seconds=2.0, max_pending_per_address=0,
                     clock=lambda: now[0])
    listener = socket.create_server(("127.0.0.1", 0))
    clients = []
    try:
        request = _a_associate_rq()
        for part in (request, request[:20]):  # whole; and a trickle that never finished
            client = socket.create_connection(listener.getsockname())
            conn, address = listener.accept()
            room.offer(conn, address)
            client.sendall(part)
            clients.append(client)
        room._take_incoming()
        time.sleep(0.2)  # both sends are in the node's buffers; the room has not looked
        now[0] += 2.5
        room._expire(now[0])
        assert len(admitted) == 1 and room.waiting == 0
        admitted[0].settimeout(2)
        assert admitted[0].recv(65536) == request  # every byte still there for the listener
        clients[1].settimeout(2)
        try:  # the partial one was closed (reset: it had sent bytes the room never read)
            assert clients[1].recv(10) == b""
        except ConnectionResetError:
            pass
    finally:
        for sock in [*clients, *admitted, listener]:
            sock.close()
        room.start()  # only so that stop() closes what the room holds
        room.stop()
