"""The ``peers`` list: the PACS, modalities and archives the node talks to, and what each may do."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import _check_ae_title, _Section
from .dicomweb import DicomwebSection


class Peer(_Section):
    """A remote AE or DICOMweb service the node knows. ``send``: may send (C-STORE) to us;
    ``receive``: may receive results from us. ``verify_host``: the caller must connect from
    ``host``. A peer has a DIMSE address (``ae_title``, ``host``, ``port``), a ``dicomweb:``
    service, or both; one that only pushes to the node by STOW-RS (``stow: true``) needs neither.
    ``query``: the node may query and retrieve from it (C-FIND/C-MOVE/C-GET, QIDO-RS/WADO-RS)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    #: The peer's AE title; for a DICOMweb-only peer it defaults to its name in capitals (what
    #: routing rules and the index record as the source of what it sends).
    ae_title: str = ""
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    dicomweb: DicomwebSection | None = None
    #: May push instances to the node's STOW-RS endpoint, signing in with the token in
    #: stow_token_file (at /dicomweb/studies, or /dicomweb/<name>/studies to name itself).
    stow: bool = False
    stow_token_file: Path | None = None
    query: bool = False
    #: C-MOVE (the peer sends to the node's AE title: it must know the node) or C-GET (the
    #: instances come back on the same association); DICOMweb peers retrieve by WADO-RS.
    retrieve: Literal["move", "get"] = "move"
    #: For a peer with both a DIMSE address and a dicomweb: service, how results reach it.
    send_by: Literal["dimse", "dicomweb"] = "dimse"
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
        return (self.tls_identity or self.server_hostname or self.host or self.name).lower()

    @property
    def has_dimse(self) -> bool:
        """Whether the peer has a DIMSE address (host and port) the node can associate with."""
        return self.host is not None and self.port is not None

    @property
    def delivers_by_dicomweb(self) -> bool:
        """Results and forwards go by STOW-RS: ``send_by: dicomweb``, or a peer with no DIMSE address."""
        return self.dicomweb is not None and (self.send_by == "dicomweb" or not self.has_dimse)

    @property
    def address(self) -> str:
        """Where the peer is, for messages: AE@host:port, the DICOMweb URL, or both."""
        where = [f"{self.ae_title}@{self.host}:{self.port}"] if self.has_dimse else []
        if self.dicomweb is not None:
            where.append(self.dicomweb.url)
        return ", ".join(where) or "STOW-RS client"

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("a peer host must not be empty")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _check_address(self) -> Peer:
        if (self.host is None) != (self.port is None):
            raise ValueError(f"peer {self.name}: host and port go together (a DIMSE address needs both)")
        if not self.has_dimse and self.dicomweb is None and not self.stow:
            raise ValueError(f"peer {self.name}: give its DIMSE address (ae_title, host, port), a dicomweb: service, "
                             "or stow: true for a client that only pushes by STOW-RS")
        if self.has_dimse and not self.ae_title:
            raise ValueError(f"peer {self.name}: a DIMSE peer needs its ae_title")
        if self.stow and self.stow_token_file is None:
            raise ValueError(f"peer {self.name}: stow: true needs stow_token_file (the token that client signs in with)")
        if self.send_by == "dicomweb" and self.dicomweb is None:
            raise ValueError(f"peer {self.name}: send_by: dicomweb needs its dicomweb: service")
        if self.tls and not self.has_dimse:
            raise ValueError(f"peer {self.name}: tls: true is for DIMSE; a DICOMweb URL says https:// instead")
        title = self.ae_title or "".join(c for c in self.name.upper() if c.isalnum() or c in "_-.")[:16]
        object.__setattr__(self, "ae_title", _check_ae_title(title))
        return self

    def host_matches(self, address: str) -> bool:
        """Whether a connection from ``address`` may be this peer (names compare as given,
        addresses as IP addresses so ``::ffff:127.0.0.1`` equals ``127.0.0.1``)."""
        if self.host is None:
            return False
        try:
            mine = ipaddress.ip_address(self.host)
            theirs = ipaddress.ip_address(address)
        except ValueError:
            return self.host == address
        if isinstance(theirs, ipaddress.IPv6Address) and theirs.ipv4_mapped is not None:
            theirs = theirs.ipv4_mapped
        return mine == theirs
