"""What every section of the configuration shares: frozen models that refuse unknown keys, the
AE title rule, and the helpers that tell a PostgreSQL URL from a path and keep its password out
of logs."""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict

_AE_TITLE_FORBIDDEN = set("\\")


def _check_ae_title(value: str) -> str:
    """AE titles are 1-16 characters of the default repertoire, no backslash, not all spaces."""
    title = value.strip()
    if not title:
        raise ValueError("an AE title must not be empty")
    if len(title) > 16:
        raise ValueError(f"an AE title has at most 16 characters, {title!r} has {len(title)}")
    if any(ch in _AE_TITLE_FORBIDDEN or not (32 <= ord(ch) < 127) for ch in title):
        raise ValueError(f"an AE title uses printable ASCII without backslash, got {title!r}")
    return title


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_postgres_url(location: object) -> bool:
    """Whether an index location (index.url or index.path) names a PostgreSQL database."""
    return str(location).startswith(("postgresql://", "postgres://"))


def redacted(location: object) -> str:
    """An index location for messages: a URL's password replaced by ***."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", str(location))


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
