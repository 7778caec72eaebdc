"""Where the node keeps what it received and what it did: ``storage``, ``index``, ``audit``
(with its syslog copy), ``retention`` and ``logs``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import _Section, is_postgres_url, redacted
from .node import Durability


class StorageSection(_Section):
    path: Path = Path("./var/storage")
    durability: Durability = Durability.FSYNC
    #: New instances are refused with 0xA700 when free space drops below this.
    min_free_mb: int = Field(1024, ge=0)


class IndexSection(_Section):
    """Where the index lives: ``path`` (SQLite, the embedded default for one machine) or ``url``
    (``postgresql://user@host:port/database``: one index for listeners, workers and senders on
    several machines; index_postgres.py). With a url, ``path``'s folder still holds this
    machine's metrics files and nothing else."""

    path: Path = Path("./var/index.sqlite")
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value is not None and not is_postgres_url(value):
            raise ValueError("index.url: only postgresql://... URLs (leave it out for the SQLite file at index.path)")
        return value

    @property
    def location(self) -> Path | str:
        """What Index() opens: the PostgreSQL URL when set, else the SQLite file."""
        return self.url or self.path

    def describe(self) -> str:
        """The location for messages (a URL's password replaced)."""
        return redacted(self.url) if self.url else str(self.path)

    def exists(self) -> bool:
        """Whether there is an index to read (a PostgreSQL index is assumed to be there)."""
        return self.url is not None or self.path.exists()


class SyslogSection(_Section):
    """An ATNA audit repository: RFC 5424 syslog over TLS (RFC 5425, port 6514) or TCP."""

    host: str
    port: int = Field(6514, ge=1, le=65535)
    transport: Literal["tls", "tcp"] = "tls"
    #: The CA the repository's certificate chains to (default: the system's).
    ca_certificates: Path | None = None
    server_hostname: str | None = None


class AuditSection(_Section):
    #: JSON lines, hash-chained, one per association, refusal, delivery and removal (audit.py).
    path: Path = Path("./var/audit.jsonl")
    #: Also send the DICOM audit messages to an audit repository.
    syslog: SyslogSection | None = None
    #: The key that signs checkpoints and the anchor (audit.py); default ``<path>.key``, made
    #: owner-only with 32 random bytes at the first start. Keep a copy off the machine.
    key_file: Path | None = None
    #: A signed checkpoint after this many records or seconds, whichever comes first.
    checkpoint_records: int = Field(100, ge=1)
    checkpoint_seconds: float = Field(300.0, gt=0)


class LogsSection(_Section):
    #: ``text``: one readable line per event; ``json``: one JSON object per line, with the
    #: association, study, series, job and peer it is about (logs.py).
    format: Literal["text", "json"] = "text"


class RetentionSection(_Section):
    """What the node keeps (retention.py). Off by default: a node that deletes studies is a
    decision for the site. A study goes only when nothing about it is unfinished."""

    enabled: bool = False
    #: Studies whose last instance arrived longer ago than this are removed (None: no age limit).
    max_age_days: float | None = Field(None, gt=0)
    #: Result folders of jobs finished longer ago than this, with no delivery pending.
    results_max_age_days: float | None = Field(None, gt=0)
    #: While free space is under this, the oldest studies are removed first.
    disk_free_watermark_mb: int | None = Field(None, gt=0)
    interval_seconds: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _something_to_do(self) -> RetentionSection:
        if self.enabled and self.max_age_days is None and self.results_max_age_days is None \
                and self.disk_free_watermark_mb is None:
            raise ValueError("retention is enabled but sets no limit: give max_age_days, results_max_age_days or "
                             "disk_free_watermark_mb")
        return self
