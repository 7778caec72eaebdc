"""The ``peers`` list: the PACS, modalities and archives the node talks to, and what each may do."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from .base import _check_ae_title, _Section


class Peer(_Section):
    """A remote AE the node knows. ``send``: may send (C-STORE) to us; ``receive``: may
    receive results from us. ``verify_host``: the caller must connect from ``host``."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    send: bool = True
    receive: bool = True
    verify_host: bool = False
    #: SEG encodings this peer should get, preferred first, each used only if the peer accepts
    #: it at association: binary-jpeg2000 (JPEG 2000 lossless), labelmap (Label Map SEG).
    #: Plain BINARY is always the last resort.
    seg_encodings: list[Literal["binary", "binary-jpeg2000", "labelmap"]] = []
    #: TLS both ways: this peer is accepted only on the TLS port with a client certificate that
    #: names it (``tls_identity``, else ``server_hostname``, else ``host``), and the node
    #: reaches it over TLS, checking its certificate against ``server_hostname`` (else ``host``).
    tls: bool = False
    server_hostname: str | None = None
    tls_identity: str | None = None

    def certificate_identity(self) -> str:
        """The name this peer's client certificate must carry."""
        return (self.tls_identity or self.server_hostname or self.host).lower()

    @field_validator("ae_title")
    @classmethod
    def _check_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a peer host must not be empty")
        return value.strip()

    def host_matches(self, address: str) -> bool:
        """Whether a connection from ``address`` may be this peer (names compare as given,
        addresses as IP addresses so ``::ffff:127.0.0.1`` equals ``127.0.0.1``)."""
        try:
            mine = ipaddress.ip_address(self.host)
            theirs = ipaddress.ip_address(address)
        except ValueError:
            return self.host == address
        if isinstance(theirs, ipaddress.IPv6Address) and theirs.ipv4_mapped is not None:
            theirs = theirs.ipv4_mapped
        return mine == theirs
