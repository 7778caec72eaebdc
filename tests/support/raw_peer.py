"""A DICOM peer that writes its own PDUs: the fragmentation and pacing real peers may use and
pynetdicom's SCU never does (command and data set in one P-DATA, a data set in many small PDVs,
several PDVs per P-DATA, a command set over several P-DATA, bytes trickled one TCP segment at a
time), and requests the node must refuse. An SCU (``RawSCU``) and an SCP (``RawSCP``).

Only the framing is ours: A-ASSOCIATE PDUs and command sets are encoded and decoded with
pynetdicom's and pydicom's own code, so a difference in what the node answers is the node's.
Every socket is on loopback, every read has a timeout.
"""

from __future__ import annotations

import io
import random
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.9.7156.1.99"
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
FRAGMENTATIONS = ("plain", "packed", "one-pdu", "tiny-pdvs", "split-command")


class PeerClosed(ConnectionError):
    """The other side closed the connection (or aborted) where a PDU was expected."""


class ReleaseRequested(PeerClosed):
    """An A-RELEASE-RQ came where a P-DATA-TF was expected."""


def command_bytes(message: str, **values: Any) -> bytes:
    """A command set encoded by pynetdicom and pydicom (Implicit VR LE, group length first)."""
    from ..net.patches.test_store_messages import command_set_of

    return bytes(encode(command_set_of(message, **values), True, True))


def store_request(message_id: int, sop_class: str, sop_instance: str, priority: int | None = 2) -> bytes:
    values: dict[str, Any] = {"MessageID": message_id, "AffectedSOPClassUID": sop_class,
                              "AffectedSOPInstanceUID": sop_instance, "DataSet": io.BytesIO(b"\0")}
    if priority is not None:
        values["Priority"] = priority
    return command_bytes("C_STORE_RQ", **values)


def raw_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A group-0000 command set from (element number, value bytes) as given, unchecked, with
    its group length: for requests pydicom and pynetdicom refuse to encode (a 65-character UID)."""
    body = b"".join(struct.pack("<HHL", 0, elem, len(value)) + value for elem, value in elements)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def raw_store_request(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    """A C-STORE-RQ command set with the UIDs written as given (padded to even length)."""
    def ui(text: str) -> bytes:
        raw = text.encode("ascii")
        return raw + b"\0" * (len(raw) % 2)

    return raw_command([(0x0002, ui(sop_class)), (0x0100, struct.pack("<H", 0x0001)),
                        (0x0110, struct.pack("<H", message_id)), (0x0700, struct.pack("<H", 2)),
                        (0x0800, struct.pack("<H", 0x0000)), (0x1000, ui(sop_instance))])


def pdv(context_id: int, control: int, value: bytes) -> bytes:
    return struct.pack(">LBB", len(value) + 2, context_id, control) + value


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def fragment(command: bytes, dataset: bytes | None, context_id: int, max_pdu: int, rng: random.Random,
             mode: str = "plain") -> list[bytes]:
    """The P-DATA-TF PDUs of one message, each within ``max_pdu`` (0: no limit), framed by
    ``mode``: ``plain`` (as DCMTK and pynetdicom do: command alone, then full data PDVs),
    ``packed`` (PDVs of random sizes, several per PDU), ``one-pdu`` (command and data set
    together where they fit), ``tiny-pdvs`` (the data set in PDVs of 1-64 bytes),
    ``split-command`` (the command set over several PDVs in separate PDUs)."""
    room = (max_pdu or 16 * 2**20) - 6  # a PDV's value: the PDU's variable field less its item header
    if room < 1:
        raise ValueError(f"max_pdu {max_pdu} leaves no room for a PDV")
    pieces: list[tuple[int, bytes]] = []  # (control header, value)
    if mode == "split-command":
        cuts = sorted(rng.sample(range(1, len(command)), min(2, len(command) - 1)))
        parts = [command[a:b] for a, b in zip([0, *cuts], [*cuts, len(command)])]
        pieces += [(1, part) for part in parts[:-1]] + [(3, parts[-1])]
    else:
        parts = _chunks(command, room)
        pieces += [(1, part) for part in parts[:-1]] + [(3, parts[-1])]
    if dataset is not None:
        if mode == "tiny-pdvs":
            sizes: Callable[[], int] = lambda: rng.randint(1, 64)  # noqa: E731
        elif mode == "packed":
            sizes = lambda: rng.randint(1, room)  # noqa: E731
        else:
            sizes = lambda: room  # noqa: E731
        offset, values = 0, []
        while offset < len(dataset):
            size = min(sizes(), room, len(dataset) - offset)
            values.append(dataset[offset:offset + size])
            offset += size
        values = values or [b""]
        pieces += [(0, value) for value in values[:-1]] + [(2, values[-1])]
    # A piece larger than the room left: split further (a command fragment keeps its bit 0).
    items: list[bytes] = []
    for control, value in pieces:
        parts = _chunks(value, room)
        last = control & 2
        for number, part in enumerate(parts):
            bits = (control & 1) | (last if number == len(parts) - 1 else 0)
            items.append(pdv(1 if context_id is None else context_id, bits, part))
    pdus: list[bytes] = []
    limit = room + 6
    if mode in ("plain", "split-command"):
        return [pdu(P_DATA_TF, item) for item in items]
    current = b""
    for item in items:
        if current and len(current) + len(item) > limit:
            pdus.append(pdu(P_DATA_TF, current))
            current = b""
        current += item
        if mode == "packed" and rng.random() < 0.3:
            pdus.append(pdu(P_DATA_TF, current))
            current = b""
    if current:
        pdus.append(pdu(P_DATA_TF, current))
    return pdus


@dataclass
class Message:
    """A DIMSE message read off the wire: its context, command set and data set bytes."""

    context_id: int
    command: Dataset
    dataset: bytes | None
    pdus: int = 0


@dataclass
class _Connection:
    sock: socket.socket
    trickle: int = 0  # send the first this many bytes one TCP segment per byte
    sent: int = 0
    _pending: list[tuple[int, bytes]] = field(default_factory=list)

    def send(self, data: bytes) -> None:
        if self.trickle > self.sent:
            head = data[: self.trickle - self.sent]
            for i in range(len(head)):
                self.sock.sendall(head[i:i + 1])
            data = data[len(head):]
            self.sent += len(head)
        if data:
            self.sock.sendall(data)
            self.sent += len(data)

    def recv_exact(self, count: int) -> bytes:
        buffer = bytearray()
        while len(buffer) < count:
            chunk = self.sock.recv(min(count - len(buffer), 1 << 20))
            if not chunk:
                raise PeerClosed(f"connection closed after {len(buffer)} of {count} bytes")
            buffer += chunk
        return bytes(buffer)

    def read_pdu(self, limit: int = 64 * 2**20) -> tuple[int, bytes]:
        pdu_type, _, length = struct.unpack(">BBL", self.recv_exact(6))
        if length > limit:
            raise ValueError(f"peer announced a {length}-byte PDU")
        return pdu_type, self.recv_exact(length)

    def read_message(self) -> Message:
        """One whole DIMSE message (PDVs may span PDUs; extra PDVs are kept for the next)."""
        command, data = bytearray(), bytearray()
        context_id, has_command, pdus = 0, False, 0
        while True:
            while not self._pending:
                pdu_type, body = self.read_pdu()
                pdus += 1
                if pdu_type == A_RELEASE_RQ:
                    raise ReleaseRequested("A-RELEASE-RQ")
                if pdu_type != P_DATA_TF:
                    raise PeerClosed(f"expected P-DATA-TF, got PDU type 0x{pdu_type:02X}")
                offset = 0
                while offset < len(body):
                    (length,) = struct.unpack_from(">L", body, offset)
                    self._pending.append((body[offset + 4], body[offset + 5:offset + 4 + length]))
                    offset += 4 + length
            context_id, value = self._pending.pop(0)
            control, fragment_value = value[0], value[1:]
            if control & 1:
                command += fragment_value
                if control & 2:
                    has_command = True
                    command_set = decode(io.BytesIO(bytes(command)), True, True)
                    if command_set.CommandDataSetType == 0x0101:
                        return Message(context_id, command_set, None, pdus)
            else:
                data += fragment_value
                if control & 2 and has_command:
                    return Message(context_id, command_set, bytes(data), pdus)


def _user_information(max_pdu: int) -> list[Any]:
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = IMPLEMENTATION_UID
    return [length, implementation]


def _peer_max_pdu(primitive: A_ASSOCIATE) -> int:
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            return int(item.maximum_length_received)
    return 0


class RawSCU:
    """An association requestor that frames its own P-DATA."""

    def __init__(self, host: str, port: int, calling: str, called: str, contexts: list[tuple[str, list[str]]],
                 max_pdu: int = 16382, trickle: int = 0, timeout: float = 30.0) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection = _Connection(sock, trickle)
        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT
        primitive.calling_ae_title = calling
        primitive.called_ae_title = called
        definitions = []
        for number, (abstract, syntaxes) in enumerate(contexts):
            context = PresentationContext()
            context.context_id = 2 * number + 1
            context.abstract_syntax = abstract
            context.transfer_syntax = syntaxes
            definitions.append(context)
        primitive.presentation_context_definition_list = definitions
        primitive.user_information = _user_information(max_pdu)
        request = A_ASSOCIATE_RQ()
        request.from_primitive(primitive)
        self.connection.send(request.encode())
        pdu_type, body = self.connection.read_pdu()
        if pdu_type != 0x02:
            sock.close()
            raise PeerClosed(f"association not accepted (PDU type 0x{pdu_type:02X})")
        accept = A_ASSOCIATE_AC()
        accept.decode(struct.pack(">BBL", 2, 0, len(body)) + body)
        answer = accept.to_primitive()
        self.peer_max_pdu = _peer_max_pdu(answer)
        #: abstract syntax -> (context ID, transfer syntax) of the accepted contexts
        self.accepted: dict[str, tuple[int, str]] = {}
        proposed = {c.context_id: c.abstract_syntax for c in definitions}
        for result in answer.presentation_context_definition_results_list:
            if result.result == 0:
                self.accepted[str(proposed[result.context_id])] = (result.context_id, str(result.transfer_syntax[0]))

    def send(self, pdus: list[bytes]) -> None:
        for data in pdus:
            self.connection.send(data)

    def read_message(self) -> Message:
        return self.connection.read_message()

    def release(self) -> None:
        self.connection.send(pdu(A_RELEASE_RQ, b"\0\0\0\0"))
        try:
            pdu_type, _ = self.connection.read_pdu()
            if pdu_type != A_RELEASE_RP:
                raise PeerClosed(f"expected A-RELEASE-RP, got PDU type 0x{pdu_type:02X}")
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.connection.sock.close()
        except OSError:
            pass


@dataclass
class RawSCP:
    """A Storage SCP on loopback that writes each received data set's bytes to ``folder``
    (named by the command's Affected SOP Instance UID) and answers Success, framing its
    responses by ``fragmentation`` with ``max_pdu`` advertised; each connection draws its own
    from ``rng``. ``responses`` counts the C-STORE-RSPs it sent."""

    folder: Path
    seed: int = 0
    ae_title: str = "RAWSCP"
    port: int = 0
    responses: int = 0
    errors: list[str] = field(default_factory=list)

    def start(self) -> RawSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._rng = random.Random(self.seed)
        self._thread = threading.Thread(target=self._accept, name="raw-scp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                seed = self._rng.random()
            threading.Thread(target=self._serve, args=(sock, random.Random(seed)), daemon=True).start()

    def _serve(self, sock: socket.socket, rng: random.Random) -> None:
        sock.settimeout(30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(sock, trickle=rng.choice([0, 0, 0, 200]))
        max_pdu = rng.choice([0, 4096, 16384, 65536, 1 << 20, rng.randint(64, 3000)])
        mode = rng.choice(FRAGMENTATIONS)
        try:
            pdu_type, body = connection.read_pdu()
            if pdu_type != 0x01:
                return
            request = A_ASSOCIATE_RQ()
            request.decode(struct.pack(">BBL", 1, 0, len(body)) + body)
            asked = request.to_primitive()
            peer_max = _peer_max_pdu(asked)
            results = []
            for context in asked.presentation_context_definition_list:
                result = PresentationContext()
                result.context_id = context.context_id
                result.abstract_syntax = context.abstract_syntax
                result.transfer_syntax = [context.transfer_syntax[0]]
                result.result = 0
                results.append(result)
            answer = A_ASSOCIATE()
            answer.application_context_name = APPLICATION_CONTEXT
            answer.calling_ae_title = asked.calling_ae_title
            answer.called_ae_title = asked.called_ae_title
            answer.result = 0
            answer.result_source = 1
            answer.presentation_context_definition_results_list = results
            answer.user_information = _user_information(max_pdu)
            accept = A_ASSOCIATE_AC()
            accept.from_primitive(answer)
            connection.send(accept.encode())
            while not self._stop.is_set():
                try:
                    message = connection.read_message()
                except ReleaseRequested:
                    connection.send(pdu(A_RELEASE_RP, b"\0\0\0\0"))
                    return
                except PeerClosed:
                    return
                command = message.command
                if command.CommandField == 0x0001:  # C-STORE-RQ
                    uid = str(command.AffectedSOPInstanceUID)
                    (self.folder / f"{uid}.bin").write_bytes(message.dataset or b"")
                    reply = command_bytes("C_STORE_RSP", MessageIDBeingRespondedTo=command.MessageID,
                                          AffectedSOPClassUID=command.AffectedSOPClassUID,
                                          AffectedSOPInstanceUID=uid, Status=0x0000)
                    with self._lock:
                        self.responses += 1
                elif command.CommandField == 0x0030:  # C-ECHO-RQ
                    reply = command_bytes("C_ECHO_RSP", MessageIDBeingRespondedTo=command.MessageID,
                                          AffectedSOPClassUID=command.AffectedSOPClassUID, Status=0x0000)
                else:
                    self.errors.append(f"unexpected command 0x{int(command.CommandField):04X}")
                    return
                connection.send(b"".join(fragment(reply, None, message.context_id, peer_max, rng, mode)))
        except (PeerClosed, OSError, ValueError) as exc:
            if not self._stop.is_set():
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.sock.close()
