"""The listener's accept loops: pynetdicom association servers that take only connections whose
A-ASSOCIATE-RQ is whole (``AdmittedServer``, admission.py) or that the supervisor hands over
(``HandedServer``, handoff.py), TLS handshakes bounded either way."""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from .admission import Admission
from .tls import HandshakeServerMixin


class HandedServer(HandshakeServerMixin, ThreadedAssociationServer):  # type: ignore[misc]
    """pynetdicom's threaded server for connections the supervisor accepted and handed over
    (dispatch.Receiver calls process_request): it binds and listens on nothing itself."""

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass


class AdmittedServer(ThreadedAssociationServer):  # type: ignore[misc]
    """pynetdicom's threaded server whose accepted connections wait in admission.Admission until
    their A-ASSOCIATE-RQ is whole; only then does pynetdicom start an association for them."""

    admission: Admission | None = None
    #: socketserver listens with a backlog of 5: a burst of connections would wait in SYN retries
    #: (seconds) before the room ever saw them.
    request_queue_size = 128

    def process_request(self, request: Any, client_address: Any) -> None:
        assert self.admission is not None
        self.admission.offer(request, client_address)

    def admitted(self, conn: socket.socket, address: Any, tls: bool) -> None:
        super().process_request(conn, address)
