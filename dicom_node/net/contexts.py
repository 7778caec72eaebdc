"""The presentation contexts the listener accepts: every storage SOP class pynetdicom knows
(CT, MR, Enhanced CT/MR, Secondary Capture, SEG, SR, PR, RT Structure Set, ...) with every
transfer syntax, compressed ones included, plus Verification. The listener stores what
arrives as it came, so it never needs a decoder to accept a syntax.
"""

from __future__ import annotations

from pydicom.uid import UID
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

# Uncompressed first: a sender offering several syntaxes in one context gets the plain one,
# which every later stage can read without a codec.
_PREFERRED = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
]
ACCEPTED_TRANSFER_SYNTAXES: list[str] = _PREFERRED + [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _PREFERRED]


def storage_contexts() -> list[PresentationContext]:
    """One context per storage SOP class, each accepting every transfer syntax."""
    return [build_context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]


def verification_context() -> PresentationContext:
    return build_context(Verification)


def describe_transfer_syntax(uid: str) -> str:
    """A readable name for logs and reports."""
    return UID(uid).name or uid
