"""What stands between the web service and a hostile browser or client (app.py wires it in).

- **Host allow-list.** A DNS-rebinding page in an operator's browser reaches 127.0.0.1 under a
  name of its own; a Host header that is neither loopback nor a configured ``web.allowed_hosts``
  name gets 400 (``/health`` and ``/ready`` excepted: probes address the node by IP and they say
  nothing about patients).
- **Cross-site writes.** A state-changing request (anything but GET, HEAD, OPTIONS) from a
  browser must come from the node's own origin: ``Sec-Fetch-Site`` other than same-origin or
  none, or an ``Origin`` whose host is not the request's, gets 403, with or without a token.
  Clients that send neither (curl, scripts with the bearer token) are not browsers.
- **Sizes and time.** A request body over ``web.max_body_bytes`` gets 413 (by its
  Content-Length, or once that many bytes arrived); header size is h11's limit
  and ours (``web.max_header_bytes``, 431); a request must arrive whole within ``web.request_timeout_seconds``
  of its first byte or of the last response on the connection (``RequestDeadlineProtocol``: a
  trickled request would otherwise hold a connection for ever); ``web.max_concurrency``
  connections at once (uvicorn answers 503 beyond). The STOW-RS endpoint (``/dicomweb/``)
  streams its own bodies under its own limits (``web.stow_max_request_bytes``), and its body's
  deadline restarts with each piece that arrives.
- **Headers on every response**: a Content-Security-Policy allowing the dashboard's inline
  style, its own images and forms and nothing else (no scripts, no framing), X-Frame-Options,
  nosniff, no referrer to other sites, no caching of patient data.
- **Sessions.** /login sets a cookie that is not the token: ``expiry.nonce.mac``, HMAC-signed
  with a key derived from the token, expiring after ``web.session_hours``, HttpOnly,
  SameSite=Strict, Secure when served over TLS.
- **Failed logins** are throttled per client address (``LoginThrottle``) and audited as
  Security Alerts by app.py.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
from collections import deque
from collections.abc import Iterable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HOST_FREE_PATHS = frozenset({"/health", "/ready"})
#: Paths whose handlers stream their own (large) bodies with limits of their own: the STOW-RS
#: endpoint (dicomweb/stow_server.py). Their clients are archives, not browsers.
STREAMED_PREFIX = "/dicomweb/"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                                 b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make a browser's form posts Origin: null
    (b"cache-control", b"no-store"),
]


def host_name(value: str) -> str:
    """The host of a Host header or an origin's authority, lower case, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_host_names(configured: Iterable[str], bind_host: str) -> frozenset[str]:
    names = {name.lower() for name in configured} | set(LOOPBACK_NAMES)
    try:
        if not ipaddress.ip_address(bind_host).is_unspecified:
            names.add(bind_host.lower())
    except ValueError:
        names.add(bind_host.lower())
    return frozenset(names)


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return name == "localhost"


class RequestGuard:
    """Pure ASGI middleware: Host allow-list, same-origin writes, body limit, security headers."""

    def __init__(self, app: Any, allowed_hosts: frozenset[str], max_body_bytes: int, max_header_bytes: int = 16384) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, message = refusal
            client = scope.get("client") or ("?", 0)
            log.warning("Web: refused %s %s from %s with %d: %s", scope["method"], scope["path"], client[0], status, message)
            await _plain(send, status, message)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((k, v) for k, v in SECURITY_HEADERS if k not in present)]}
            await send(message)

        if scope["path"].startswith(STREAMED_PREFIX):
            await self.app(scope, receive, send_with_headers)
            return
        body, complete = await _read_body(receive, self.max_body_bytes)
        if not complete:
            log.warning("Web: refused %s %s: body over %d bytes", scope["method"], scope["path"], self.max_body_bytes)
            await _plain(send, 413, f"request body over {self.max_body_bytes} bytes")
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only the disconnect is left to come

        await self.app(scope, replay, send_with_headers)

    def _refusal(self, scope: dict[str, Any], headers: dict[str, str]) -> tuple[int, str] | None:
        # h11 limits a request's headers only while they arrive in pieces; all at once, here.
        if sum(len(key) + len(value) + 4 for key, value in scope["headers"]) > self.max_header_bytes:
            return 431, f"request headers over {self.max_header_bytes} bytes"
        host = host_name(headers.get("host", ""))
        if scope["path"] not in HOST_FREE_PATHS and host not in self.allowed_hosts and not _is_loopback(host):
            return 400, f"Host {host[:64]!r} is not one of this node's names (web.allowed_hosts)"
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            return 400, "Content-Length is not a number"
        if length > self.max_body_bytes and not scope["path"].startswith(STREAMED_PREFIX):
            return 413, f"request body over {self.max_body_bytes} bytes"
        if scope["method"] not in SAFE_METHODS:
            # Sec-Fetch-Site is set by the browser itself (a page cannot forge it) and decides when
            # present; Origin decides for browsers that do not send it.
            site = headers.get("sec-fetch-site")
            if site is not None:
                if site not in ("same-origin", "none"):
                    return 403, f"a cross-site request (Sec-Fetch-Site: {site[:20]}) may not change anything"
                return None
            origin = headers.get("origin")
            if origin is not None and (origin == "null" or host_name(origin.split("://", 1)[-1]) != host):
                return 403, f"a request from origin {origin[:64]!r} may not change anything here"
        return None


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    """The whole request body, read before the app runs (bodies here are forms of a few
    hundred bytes); (what was read, False) as soon as it passes ``limit``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True  # the client went away: the app sees an empty body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


async def _plain(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


class Sessions:
    """Signed, expiring session cookies for browsers that signed in with the token."""

    def __init__(self, token: str, lifetime_seconds: float) -> None:
        self._key = hashlib.sha256(b"dicom-node web session\x00" + token.encode()).digest()
        self.lifetime_seconds = lifetime_seconds

    def issue(self, now: float) -> str:
        payload = f"{int(now + self.lifetime_seconds)}.{os.urandom(16).hex()}"
        return f"{payload}.{self._mac(payload)}"

    def valid(self, cookie: str, now: float) -> bool:
        payload, _, mac = cookie.rpartition(".")
        expiry = payload.split(".", 1)[0]
        if not payload or not expiry.isdigit() or not hmac.compare_digest(mac, self._mac(payload)):
            return False
        return int(expiry) > now

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()


class LoginThrottle:
    """At most ``attempts`` failed logins per client address within ``window`` seconds; past that,
    every login is refused (429) until the oldest failure leaves the window."""

    def __init__(self, attempts: int = 5, window: float = 300.0, max_clients: int = 10000) -> None:
        self.attempts = attempts
        self.window = window
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str, now: float) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        failures = self._failures.get(client)
        if not failures:
            return 0.0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.attempts:
            return 0.0
        return failures[0] + self.window - now

    def failed(self, client: str, now: float) -> int:
        """Record a failure; how many ``client`` has within the window."""
        if len(self._failures) >= self.max_clients and client not in self._failures:
            self._failures.pop(next(iter(self._failures)))  # the oldest client entry: memory stays bounded
        failures = self._failures.setdefault(client, deque())
        failures.append(now)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return len(failures)


class RequestDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request: the request line, headers and body
    must all arrive within ``request_timeout`` of the connection opening (or of the last response
    on a kept-alive connection). uvicorn's keep-alive timeout is cancelled by every byte, so a
    peer trickling a request one byte at a time would otherwise hold its connection for ever."""

    request_timeout = 10.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: Any = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            self._disarm()  # the request is in: the response may take as long as it takes
        elif self.conn.their_state is h11.SEND_BODY and str(getattr(self, "scope", {}).get("path", "")).startswith(
                STREAMED_PREFIX):
            self._arm()  # a STOW-RS upload may take minutes: only a silence of request_timeout ends it

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _expired(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            if self.conn.their_state is h11.SEND_BODY or self.conn.trailing_data[0]:
                log.warning("Web: closed a connection from %s: the request did not arrive whole within %.0f s",
                            self.client[0] if self.client else "?", self.request_timeout)
            self.transport.close()


def deadline_protocol(request_timeout: float) -> type[RequestDeadlineProtocol]:
    return type("RequestDeadlineProtocol", (RequestDeadlineProtocol,), {"request_timeout": request_timeout})
