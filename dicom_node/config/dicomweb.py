"""A peer's ``dicomweb:`` block: the archive's DICOMweb base URL and how the node signs in.

Secrets are never written in the configuration: each kind names the file that holds its
password, token, client secret, service-account key or AWS secret key (dicomweb/auth.py reads
them when a request is made, so a rotated file takes effect without a restart).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from .base import _Section

AUTH_KINDS = ("none", "basic", "bearer", "oauth2", "google", "aws-sigv4")

#: What each sign-in kind needs besides ``kind``.
_REQUIRED = {
    "none": (),
    "basic": ("user", "password_file"),
    "bearer": ("token_file",),
    "oauth2": ("token_url", "client_id", "client_secret_file"),
    "google": ("service_account_file",),
    "aws-sigv4": ("access_key_id", "secret_key_file", "region"),
}


class DicomwebAuth(_Section):
    """How the node signs in to a DICOMweb peer (``kind`` and the fields that kind needs)."""

    kind: Literal["none", "basic", "bearer", "oauth2", "google", "aws-sigv4"] = "none"
    #: basic: the user name; the password is read from password_file.
    user: str | None = None
    password_file: Path | None = None
    #: bearer: a token read from token_file, sent as ``Authorization: Bearer``.
    token_file: Path | None = None
    #: oauth2 (client credentials grant): the token endpoint, the client and its secret's file;
    #: the access token is fetched again refresh_margin_seconds before it expires.
    token_url: str | None = None
    client_id: str | None = None
    client_secret_file: Path | None = None
    scope: str | None = None
    #: google: a service-account key file (JSON); the scope defaults to cloud-healthcare.
    service_account_file: Path | None = None
    #: aws-sigv4: every request signed with botocore's Signature V4 signer.
    access_key_id: str | None = None
    secret_key_file: Path | None = None
    session_token_file: Path | None = None
    region: str | None = None
    service: str = "medical-imaging"
    refresh_margin_seconds: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _check_fields(self) -> DicomwebAuth:
        missing = [name for name in _REQUIRED[self.kind] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"dicomweb.auth kind {self.kind} needs {', '.join(missing)}")
        return self


class DicomwebSection(_Section):
    """A peer reached over DICOMweb: results and forwards by STOW-RS, queries by QIDO-RS,
    retrievals by WADO-RS, all below ``url`` (the service root, e.g. .../dicom-web)."""

    url: str = Field(pattern=r"^https?://")
    auth: DicomwebAuth = DicomwebAuth()
    #: One STOW-RS request carries at most this many bytes of instances (a series may take several).
    max_batch_bytes: int = Field(64 * 2**20, ge=2**16)
    timeout_seconds: float = Field(60.0, gt=0)
    #: A PEM bundle of CAs that sign the archive's HTTPS certificate (default: the system's).
    ca_certificates: Path | None = None

    @property
    def root(self) -> str:
        return self.url.rstrip("/")
