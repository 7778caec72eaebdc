"""Receivers for the notification tests, each a real server on a free loopback port: a RIS
(hl7apy's MLLP server) answering AA, AE or nothing; a webhook endpoint (HTTPS with a test
certificate, or HTTP) that checks the signature; an SMTP server (aiosmtpd) that requires
STARTTLS and a sign-in."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

from tests.support.peers import free_port


@dataclass
class Ris:
    """What the RIS answers (``mode``: AA, AE or silent) and the messages it got (ER7)."""

    mode: str = "AA"
    received: list[str] = field(default_factory=list)
    port: int = 0


def _handler(ris: Ris) -> type[AbstractHandler]:
    class Handler(AbstractHandler):
        def reply(self) -> str:
            text = self.incoming_message
            ris.received.append(text)
            if ris.mode == "silent":
                raise RuntimeError("told to say nothing")  # hl7apy closes the connection without an answer
            incoming = parse_message(text.replace("\n", "\r"), find_groups=False)
            ack = Message("ACK", version="2.5")
            ack.msh.msh_3, ack.msh.msh_5 = "RIS", str(incoming.msh.msh_3.value)
            ack.msh.msh_9 = "ACK^R01^ACK"
            ack.msh.msh_10 = "RIS" + str(len(ris.received))
            ack.msa.msa_1 = ris.mode
            ack.msa.msa_2 = str(incoming.msh.msh_10.value)
            if ris.mode != "AA":
                ack.msa.msa_3 = "Unknown patient"
            return "\x0b" + ack.to_er7() + "\x1c\x0d"
    return Handler


@contextmanager
def ris_server(mode: str = "AA", certificate: Any = None) -> Iterator[Ris]:
    """The RIS; with ``certificate`` (certs.Issued) it speaks MLLP over TLS only."""
    ris = Ris(mode=mode, port=free_port())
    server = MLLPServer("127.0.0.1", ris.port, {"ORU^R01^ORU_R01": (_handler(ris),)}, timeout=5)
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certificate.certificate), str(certificate.private_key))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="ris", daemon=True)
    thread.start()
    try:
        yield ris
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Hook:
    key: bytes
    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    url: str = ""


@contextmanager
def webhook_server(key: bytes, certificate: Any = None) -> Iterator[Hook]:
    hook = Hook(key)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            expected = "sha256=" + hmac.new(hook.key, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, self.headers.get("X-Dicom-Node-Signature", "")):
                hook.bad_signatures += 1
                self.send_response(401)
            else:
                hook.received.append({"headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(hook.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certificate.certificate), str(certificate.private_key))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    hook.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/hooks/dicom-node"
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Mailbox:
    messages: list[Any] = field(default_factory=list)
    port: int = 0
    logins: list[str] = field(default_factory=list)


@contextmanager
def smtp_server(certificate: Any, user: str, password: str) -> Iterator[Mailbox]:
    """aiosmtpd requiring STARTTLS before anything, then a sign-in as ``user``."""
    from email import message_from_bytes, policy

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    box = Mailbox(port=free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
            box.messages.append(message_from_bytes(envelope.content, policy=policy.default))
            return "250 OK"

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user and \
                auth_data.password.decode() == password:
            box.logins.append(user)
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate.certificate), str(certificate.private_key))
    controller = Controller(Handler(), hostname="127.0.0.1", port=box.port, tls_context=context, require_starttls=True,
                            authenticator=authenticate, auth_required=True, auth_require_tls=True)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
