"""The ``web`` section: the dashboard and API's address, sign-in token, TLS and request limits."""

from __future__ import annotations

import math
import string
from pathlib import Path

from pydantic import Field, model_validator

from ..errors import ConfigError
from .base import _is_loopback, _Section


class WebTlsSection(_Section):
    certificate: Path
    private_key: Path


class WebSection(_Section):
    """The web service ``serve`` starts beside the listener: /health, /ready, /metrics, the JSON
    API and the dashboard. On loopback by default; bound anywhere else it needs a bearer token
    (read from ``token_file``, never written in this file)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)  # 0: any free port (tests)
    token_file: Path | None = None
    #: Host names (Host header) the service answers besides loopback and web.host (web/guard.py).
    allowed_hosts: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(65536, ge=1024)
    max_header_bytes: int = Field(16384, ge=4096)
    #: A request must arrive whole within this long (slow and silent connections are closed).
    request_timeout_seconds: float = Field(10.0, gt=0)
    max_concurrency: int = Field(32, ge=1)
    #: How long a browser's sign-in lasts.
    session_hours: float = Field(12.0, gt=0)
    #: Failed sign-ins allowed per client address within 5 minutes before it must wait.
    login_attempts: int = Field(5, ge=1)
    #: The STOW-RS endpoint (/dicomweb/...): a request's whole body, and one instance in it, at
    #: most this many bytes; its body may take as long as it keeps arriving (request_timeout_seconds
    #: then bounds each silence, not the whole upload).
    stow_max_request_bytes: int = Field(4 * 2**30, ge=2**16)
    stow_max_instance_bytes: int = Field(2 * 2**30, ge=2**16)
    #: HTTPS for the dashboard and API: {certificate, private_key} (PEM files).
    tls: WebTlsSection | None = None

    @model_validator(mode="after")
    def _token_off_loopback(self) -> WebSection:
        if self.enabled and self.token_file is None and not _is_loopback(self.host):
            raise ValueError(f"web.host {self.host} is reachable from other machines: set web.token_file (a file "
                             "holding the bearer token callers must send), or bind 127.0.0.1")
        return self

    def token(self) -> str | None:
        """The bearer token, read from token_file (None: no token needed, loopback only)."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"web.token_file {self.token_file}: {exc}") from None
        if token_bits(token) < 128:
            raise ConfigError(f"web.token_file {self.token_file}: the token has under 128 bits of randomness (make one "
                              "with: openssl rand -hex 32)")
        return token


def token_bits(token: str) -> float:
    """A generous estimate of a token's strength: its length times the bits per character of the
    alphabet it draws from (hex, or the character classes it uses); a token of fewer than 8
    distinct characters is no secret at all (0)."""
    if len(set(token)) < 8:
        return 0.0
    if all(c in string.hexdigits for c in token) and (token.islower() or token.isupper() or token.isdigit()):
        alphabet = 16
    else:
        classes = [(str.isdigit, 10), (str.islower, 26), (str.isupper, 26)]
        alphabet = sum(size for test, size in classes if any(test(c) for c in token))
        alphabet += 32 if any(not c.isalnum() for c in token) else 0
    return len(token) * math.log2(alphabet)
