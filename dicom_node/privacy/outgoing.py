"""De-identified deliveries: how the outbox names them and what the sender sends.

An outbox candidate whose variant is ``deid:<profile>:<encoding>`` is the stored instance (or a
result) de-identified by ``<profile>`` at the moment it is sent, in ``<encoding>`` (``original``,
or an uncompressed variant of transcode.py). Nothing de-identified is written to disk: the
sender reads the stored file, applies the profile and hands pynetdicom the dataset.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from ..errors import DeidentificationError
from .deidentify import Deidentifier

PREFIX = "deid:"


def deid_variant(profile: str, encoding: str) -> str:
    return f"{PREFIX}{profile}:{encoding}"


def split_variant(variant: str) -> tuple[str | None, str]:
    """(profile or None, encoding) of an outbox variant."""
    if not variant.startswith(PREFIX):
        return None, variant
    profile, _, encoding = variant[len(PREFIX):].partition(":")
    return profile, encoding


def deidentified(payload: str | Path | Dataset, deidentifier: Deidentifier) -> Dataset:
    """The instance at ``payload`` (a path, or a dataset already transcoded) de-identified; an
    instance the profile holds back raises (routing holds them back before they are queued;
    this is the last check)."""
    ds = payload if isinstance(payload, Dataset) else dcmread(payload)
    held = deidentifier.check(ds)
    if held is not None:
        raise DeidentificationError(f"held back by profile {deidentifier.profile.name}: {held.reason}")
    deidentifier.apply(ds)
    return ds
