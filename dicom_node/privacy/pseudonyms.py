"""Consistent pseudonyms from a site secret: the same original always gives the same
pseudonym at one site, two sites (two keys) give unrelated ones, and nothing maps back without
the key and the originals.

Every pseudonym is an HMAC-SHA256 of the original under the site key, with a label per kind so
a UID and a patient ID that happen to be equal do not collide:

- a UID becomes ``2.25.<first 128 bits as an integer>`` (PS3.5 B.2: a UUID-derived UID, at most
  44 characters), so a study sent twice, or its series on different days, gets the same UIDs;
- a patient becomes ``PSEUDO-<16 hex digits>`` (IssuerOfPatientID and PatientID together);
- the same patient's dates move by one offset, 1 to 3650 days back, so intervals between a
  patient's studies survive (Retain Longitudinal Temporal Information with Modified Dates).

The key lives in a file named by ``deidentification.key_file`` (never in the configuration):
at least 32 bytes, ideally random (``head -c 32 /dev/urandom > key``), readable by the node only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import stat
from datetime import datetime, timedelta
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 32
MAX_SHIFT_DAYS = 3650


class PseudonymKey:
    """The site secret and the pseudonyms derived from it."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError(f"the de-identification key has {len(secret)} bytes; at least {MIN_KEY_BYTES} are needed")
        self._secret = secret

    @classmethod
    def from_file(cls, path: Path) -> PseudonymKey:
        try:
            secret = path.read_bytes()  # every byte, as written: a random key may begin or end with "whitespace"
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(f"deidentification.key_file {path}: {exc}") from None
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("deidentification.key_file %s is readable by other users (mode %o): whoever reads it can link "
                        "pseudonyms to patients; chmod 600 it", path, stat.S_IMODE(mode))
        try:
            return cls(secret)
        except ConfigError as exc:
            raise ConfigError(f"deidentification.key_file {path}: {exc}") from None

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The pseudonymous UID of ``original`` (a valid UID, 2.25 root)."""
        return "2.25." + str(int.from_bytes(self._digest("uid", original.strip())[:16], "big"))

    def patient_id(self, patient_id: str, issuer: str = "") -> str:
        return "PSEUDO-" + self._digest("patient", f"{issuer.strip()}\0{patient_id.strip()}")[:8].hex().upper()

    def date_shift(self, patient_id: str, issuer: str = "") -> timedelta:
        """How far this patient's dates move: 1 to MAX_SHIFT_DAYS days back."""
        value = int.from_bytes(self._digest("dates", f"{issuer.strip()}\0{patient_id.strip()}")[:8], "big")
        return timedelta(days=-(1 + value % MAX_SHIFT_DAYS))


def shift_date(value: str, shift: timedelta) -> str:
    """A DA value moved by ``shift``; '' for a value that is not a date (it cannot be kept)."""
    try:
        return (datetime.strptime(value.strip()[:8], "%Y%m%d").date() + shift).strftime("%Y%m%d")
    except ValueError:
        return ""


def shift_datetime(value: str, shift: timedelta) -> str:
    """A DT value whose date part moves by ``shift`` (time and offset kept); '' when unreadable."""
    text = value.strip()
    moved = shift_date(text[:8], shift) if len(text) >= 8 else ""
    return moved + text[8:] if moved else ""

