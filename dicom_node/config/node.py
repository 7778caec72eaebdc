"""The ``node`` section: who the node is on the network (AE title, address, port, TLS) and how
its listener admits associations."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from .base import _check_ae_title, _Section


class Durability(str, Enum):
    """How hard the store works before a C-STORE is acknowledged.

    ``fsync``: file and directory entry are fsynced, so an acknowledged instance survives a
    power cut. ``none``: written and renamed but left to the OS cache; survives a crash of the
    node (kill -9), not of the machine. Only for throw-away set-ups.
    """

    FSYNC = "fsync"
    NONE = "none"


class TlsSection(_Section):
    """DICOM over TLS on a port of its own (tls.py; PS3.15 B.12, BCP 195: TLS 1.2 or 1.3)."""

    port: int = Field(2762, ge=0, le=65535)  # 2762: the registered DICOM-TLS port; 0: any free one
    certificate: Path
    private_key: Path
    #: CA bundle that client certificates (and, outgoing, peers' server certificates) must chain to.
    ca_certificates: Path | None = None
    require_client_certificate: bool = True
    #: A connection that has not finished its handshake by then is dropped (and audited).
    handshake_timeout_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _ca_for_clients(self) -> TlsSection:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates (the CA the clients' certificates chain to)")
        return self


class NodeSection(_Section):
    ae_title: str = "AI_NODE"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)  # 0: any free port (tests)
    #: Reject calling AE titles (and, per peer, hosts) not listed in ``peers``.
    reject_unknown_callers: bool = True
    max_associations: int = Field(16, ge=1, le=1000)
    #: Seconds a silent association may stay open before it is aborted.
    network_timeout_seconds: float = Field(60.0, gt=0)
    #: Seconds a PDU may take from its first byte to its last: a peer trickling a byte at a time
    #: (each byte resetting the network timeout) is aborted.
    pdu_timeout_seconds: float = Field(60.0, gt=0)
    #: Seconds a new connection may take to send its whole A-ASSOCIATE-RQ; until it has, it holds
    #: no association slot (admission.py), and after this long it is closed.
    association_request_seconds: float = Field(10.0, gt=0)
    #: Connections one source address may have waiting for their A-ASSOCIATE-RQ (or their TLS
    #: handshake) at once; more are refused. 0: no cap.
    max_pending_per_address: int = Field(8, ge=0)
    #: Listener processes behind the port (the supervising process accepts and hands each
    #: connection to the least busy), so concurrent associations are not serialised by one
    #: interpreter's lock. 0: two per CPU core, at most 8.
    workers: int = Field(0, ge=0, le=64)
    #: The listener's replacements of pynetdicom internals (dicom_node/net/: event-driven waits,
    #: direct C-STORE and P-DATA handling). false: pynetdicom's own code paths (slower; for
    #: telling a fast-path defect from anything else). The bounded PDU reader and the exact
    #: send/reactor hand-over stay either way.
    fast_paths: bool = True
    #: The maximum PDU length this node advertises to callers (0: unlimited). Larger PDUs cost
    #: less per byte; a peer's PDU longer than this (plus 64 KiB) is refused unread.
    max_pdu_bytes: int = Field(1048576, ge=0, le=2**26)
    #: DICOM over TLS beside (or, with ``plain: false``, instead of) the plain port.
    tls: TlsSection | None = None
    #: Listen on the plain ``port``; false: TLS only.
    plain: bool = True

    def worker_count(self, cpus: int | None) -> int:
        """Listener processes to start: 4 concurrent associations on 2 cores ran at 302-431
        instances/s with 2 processes, 532-715 with 4, 482-566 with 8 (connections spread by
        the kernel's SO_REUSEPORT hash then; 674-777 with one process each)."""
        return self.workers or max(2, min(8, 2 * (cpus or 1)))

    #: Other called AE titles this port answers to (routing rules tell them apart with
    #: ``called_ae``: one port, several contexts, e.g. AI_CHEST and AI_NEURO).
    ae_titles: list[str] = []
    #: Refuse an association whose called AE title is neither ``ae_title`` nor one of
    #: ``ae_titles`` (A-ASSOCIATE-RJ, called AE title not recognised). Off: any called title is
    #: accepted and recorded as called.
    require_called_ae_title: bool = False

    @field_validator("ae_title")
    @classmethod
    def _check_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("ae_titles")
    @classmethod
    def _check_titles(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]
