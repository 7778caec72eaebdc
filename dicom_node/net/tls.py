"""DICOM over TLS (PS3.15 B.12, the BCP 195 TLS Secure Transport Connection Profile).

The listener's TLS port (``node.tls``) takes TLS 1.2 or 1.3 only, with BCP 195's cipher suites
for 1.2 (ECDHE or DHE key exchange, AEAD ciphers) and, by default, a client certificate from the
configured CA. The handshake runs in a thread of its own per connection, never in the accept
loop, and is bounded in time: a client that connects and says nothing holds up no one.

A client certificate is an identity: a peer with ``tls: true`` is accepted only over TLS and only
when its certificate names the peer (``tls_identity``, else ``server_hostname``, else ``host``,
among the certificate's DNS and IP subject alternative names and its common name); over the
plain port that AE title is refused. Outgoing associations to such a peer (results,
forwarding) use TLS with the node's certificate as the client certificate and check the peer's
certificate against the same CA and its ``server_hostname``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from ..errors import ConfigError

log = logging.getLogger(__name__)

#: BCP 195 (RFC 9325 4.2) recommended TLS 1.2 suites; TLS 1.3's own suites are all acceptable.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
])


def _base(context: ssl.SSLContext, tls: Any) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"node.tls: cannot load certificate {tls.certificate} with key {tls.private_key}: {exc}") from None
    if tls.ca_certificates is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_certificates))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"node.tls.ca_certificates {tls.ca_certificates}: {exc}") from None
    return context


def server_context(tls: Any) -> ssl.SSLContext:
    """The listener's context for ``node.tls`` (config.TlsSection)."""
    context = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(tls: Any) -> ssl.SSLContext:
    """The context for associations the node opens to ``tls: true`` peers."""
    context = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), tls)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if tls.ca_certificates is None:
        context.load_default_certs()
    return context


def certificate_names(certificate: dict[str, Any] | None) -> set[str]:
    """The names a peer certificate (``SSLSocket.getpeercert()``) vouches for: DNS and IP
    subject alternative names and the subject's common name, lower case."""
    if not certificate:
        return set()
    names = {value.lower() for kind, value in certificate.get("subjectAltName", ()) if kind in ("DNS", "IP Address")}
    for part in certificate.get("subject", ()):
        names.update(value.lower() for key, value in part if key == "commonName")
    return names


def peer_certificate(sock: Any) -> tuple[bool, dict[str, Any] | None]:
    """(over TLS?, the verified client certificate or None) for an association's socket."""
    if isinstance(sock, ssl.SSLSocket):
        try:
            return True, sock.getpeercert() or None
        except (ValueError, OSError):
            return True, None
    return False, None


_HANDSHAKE_LOCK = threading.Lock()


class HandshakeServerMixin:
    """Serve TLS connections with the handshake in a thread of their own (bounded by
    ``handshake_timeout``), then as pynetdicom's threaded server would any connection.

    ``on_refused(address, port, reason)`` hears of every connection the handshake refused (an
    untrusted or missing client certificate, TLS 1.0/1.1, plain text on the TLS port)."""

    tls_context: ssl.SSLContext | None = None
    handshake_timeout: float = 10.0
    on_refused: Callable[[str, int, str], None] | None = None
    #: Handshakes in progress at once, in all and per source address (node.max_pending_per_address):
    #: silent TLS connections cost one thread each until their handshake timeout, so they are bounded.
    max_handshakes: int = 64
    max_handshakes_per_address: int = 8
    _handshaking: Counter[str] | None = None

    def process_tls_request(self, raw: socket.socket, address: Any) -> None:
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        with _HANDSHAKE_LOCK:
            if self._handshaking is None:
                self._handshaking = Counter()
            busy = sum(self._handshaking.values()) >= self.max_handshakes or (
                self.max_handshakes_per_address and self._handshaking[host] >= self.max_handshakes_per_address)
            if not busy:
                self._handshaking[host] += 1
        if busy:
            reason = f"too many TLS handshakes in progress (from {host}, or in all)"
            log.warning("TLS connection from %s refused: %s", host, reason)
            raw.close()
            if self.on_refused is not None:
                self.on_refused(host, int(address[1]) if isinstance(address, tuple) else 0, reason)
            return
        threading.Thread(target=self._handshake, args=(raw, address), name="dicom-node-tls-handshake", daemon=True).start()

    def _handshake(self, raw: socket.socket, address: Any) -> None:
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        try:
            handshaken = self._do_handshake(raw, address)
        finally:
            with _HANDSHAKE_LOCK:
                assert self._handshaking is not None
                self._handshaking[host] -= 1
                if self._handshaking[host] <= 0:
                    del self._handshaking[host]
        if handshaken is not None:
            self.process_request_thread(handshaken, address)  # type: ignore[attr-defined]

    def _do_handshake(self, raw: socket.socket, address: Any) -> socket.socket | None:
        assert self.tls_context is not None
        host, port = (address[0], int(address[1])) if isinstance(address, tuple) else (str(address), 0)
        sock: socket.socket = raw
        try:
            raw.settimeout(self.handshake_timeout)
            sock = self.tls_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            sock.do_handshake()
            sock.settimeout(None)
        except (ssl.SSLError, OSError) as exc:
            reason = _refusal(exc)
            log.warning("TLS connection from %s:%d refused: %s", host, port, reason)
            if self.on_refused is not None:
                self.on_refused(host, port, reason)
            for each in (sock, raw):  # the TLS wrapper took the raw socket over, when it was made
                try:
                    each.close()
                except OSError:
                    pass
            return None
        return sock


def _refusal(exc: BaseException) -> str:
    """The handshake failure in words an operator can act on."""
    text = getattr(exc, "reason", None) or str(exc)
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "no TLS handshake in time (a client that connects and says nothing)"
    if text in ("UNEXPECTED_EOF_WHILE_READING", "EOF") or isinstance(exc, (ssl.SSLEOFError, ConnectionResetError)):
        return "closed before the TLS handshake (a port probe, or a client that gave up)"
    if text in ("HTTP_REQUEST", "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE") \
            or "wrong version number" in str(exc):
        return f"not TLS, or a protocol version below TLS 1.2 ({text})"
    if text in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"):
        return f"TLS version below 1.2 refused ({text})"
    if text in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA",
                "SSLV3_ALERT_BAD_CERTIFICATE", "NO_CERTIFICATE_RETURNED"):
        return f"client certificate missing or not from a trusted CA ({text})"
    return f"TLS handshake failed ({text})"


class TlsAssociationServer(HandshakeServerMixin, ThreadedAssociationServer):  # type: ignore[misc]
    """pynetdicom's threaded server on the TLS port: accept only (no handshake in the accept
    loop), then the handshake in the connection's own thread."""

    def get_request(self) -> tuple[socket.socket, Any]:
        return self.socket.accept()  # type: ignore[union-attr, no-any-return]

    def process_request(self, request: Any, client_address: Any) -> None:
        self.process_tls_request(request, client_address)
