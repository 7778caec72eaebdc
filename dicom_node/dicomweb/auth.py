"""Signing in to a DICOMweb peer: one ``requests`` auth per kind of ``dicomweb.auth``.

Each reads its secret from the file the configuration names, when a request is made (a rotated
secret takes effect without a restart; nothing secret is held in the configuration or logged).
Tokens that expire (OAuth2 client credentials, Google service accounts) are fetched again
``refresh_margin_seconds`` before they do, so a long STOW-RS upload never starts with a token
about to lapse. AWS requests are signed whole (method, path, query, headers, body hash) by
botocore's Signature V4 signer, as AWS HealthImaging expects.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timezone
from pathlib import Path
from typing import Any

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from ..config import DicomwebAuth
from ..errors import PeerError

log = logging.getLogger(__name__)

#: The scope Google's Cloud Healthcare API wants for DICOMweb.
GOOGLE_HEALTHCARE_SCOPE = "https://www.googleapis.com/auth/cloud-healthcare"


def read_secret(path: Path, what: str) -> str:
    """The stripped contents of a secret file; PeerError names the file (never its contents)."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise PeerError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not secret:
        raise PeerError(f"the {what} file {path} is empty")
    return secret


class NoAuth(AuthBase):
    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


class BasicFileAuth(AuthBase):
    """HTTP Basic with the password read from its file."""

    def __init__(self, user: str, password_file: Path) -> None:
        self.user, self.password_file = user, password_file

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return HTTPBasicAuth(self.user, read_secret(self.password_file, "password"))(request)


class BearerFileAuth(AuthBase):
    """``Authorization: Bearer`` with a token read from its file (another process renews it)."""

    def __init__(self, token_file: Path) -> None:
        self.token_file = token_file

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {read_secret(self.token_file, 'token')}"
        return request


class OAuth2ClientCredentials(AuthBase):
    """The OAuth 2.0 client credentials grant (RFC 6749 4.4): the client id and secret are
    posted to the token endpoint, and the access token is kept until ``margin`` seconds before
    its ``expires_in`` runs out."""

    def __init__(self, token_url: str, client_id: str, secret_file: Path, scope: str | None, margin: float,
                 timeout: float = 30.0, verify: str | bool = True) -> None:
        self.token_url, self.client_id, self.secret_file, self.scope = token_url, client_id, secret_file, scope
        self.margin, self.timeout, self.verify = margin, timeout, verify
        self._token = ""
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if not self._token or time.time() >= self._expires_at - self.margin:
                self._fetch()
            return self._token

    def _fetch(self) -> None:
        form = {"grant_type": "client_credentials", "client_id": self.client_id,
                "client_secret": read_secret(self.secret_file, "client secret")}
        if self.scope:
            form["scope"] = self.scope
        try:
            response = requests.post(self.token_url, data=form, timeout=self.timeout, verify=self.verify,
                                     headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise PeerError(f"OAuth2 token endpoint {self.token_url} unreachable: {exc}") from None
        if response.status_code != 200:
            raise PeerError(f"OAuth2 token endpoint {self.token_url} answered {response.status_code}: "
                            f"{response.text[:200]}")
        try:
            body = response.json()
            token, lifetime = str(body["access_token"]), float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError) as exc:
            raise PeerError(f"OAuth2 token endpoint {self.token_url} gave no access_token ({exc})") from None
        self._token, self._expires_at = token, time.time() + lifetime
        log.info("OAuth2: new access token from %s for %s, valid %.0f s", self.token_url, self.client_id, lifetime)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request


class GoogleServiceAccount(AuthBase):
    """A Google service account (google-auth): a JWT signed with the account's key is exchanged
    at its ``token_uri`` for an access token, renewed before it expires."""

    def __init__(self, key_file: Path, scope: str | None, margin: float) -> None:
        from google.oauth2 import service_account

        try:
            self.credentials = service_account.Credentials.from_service_account_file(
                str(key_file), scopes=[scope or GOOGLE_HEALTHCARE_SCOPE])
        except (OSError, ValueError) as exc:
            raise PeerError(f"cannot read the Google service-account key {key_file}: {exc}") from None
        self.margin = margin
        self._lock = threading.Lock()

    def token(self) -> str:
        from google.auth.exceptions import GoogleAuthError
        from google.auth.transport.requests import Request

        with self._lock:
            expiry = self.credentials.expiry  # naive UTC (google-auth's convention)
            stale = expiry is None or expiry.replace(tzinfo=timezone.utc).timestamp() - time.time() < self.margin
            if not self.credentials.token or stale:
                try:
                    self.credentials.refresh(Request())
                except (GoogleAuthError, requests.RequestException) as exc:
                    raise PeerError(f"Google sign-in failed: {exc}") from None
            return str(self.credentials.token)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request


class AwsSigV4(AuthBase):
    """AWS Signature Version 4 (botocore's signer) over the whole request, body included."""

    def __init__(self, access_key_id: str, secret_key_file: Path, session_token_file: Path | None, region: str,
                 service: str) -> None:
        self.access_key_id, self.secret_key_file, self.session_token_file = access_key_id, secret_key_file, session_token_file
        self.region, self.service = region, service

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        credentials = Credentials(self.access_key_id, read_secret(self.secret_key_file, "AWS secret key"),
                                  read_secret(self.session_token_file, "AWS session token")
                                  if self.session_token_file is not None else None)
        body = request.body
        if body is not None and not isinstance(body, (bytes, str)):
            raise PeerError("an AWS-signed request needs its whole body to sign (not a stream)")
        signed = AWSRequest(method=request.method, url=request.url, data=body or b"",
                            headers={k: v for k, v in request.headers.items() if k.lower() not in ("authorization",)})
        SigV4Auth(credentials, self.service, self.region).add_auth(signed)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in signed.headers:
                request.headers[name] = signed.headers[name]
        return request


def auth_for(auth: DicomwebAuth, verify: str | bool = True) -> Any:
    """The ``requests`` auth for a peer's ``dicomweb.auth`` section."""
    if auth.kind == "basic":
        assert auth.user is not None and auth.password_file is not None
        return BasicFileAuth(auth.user, auth.password_file)
    if auth.kind == "bearer":
        assert auth.token_file is not None
        return BearerFileAuth(auth.token_file)
    if auth.kind == "oauth2":
        assert auth.token_url is not None and auth.client_id is not None and auth.client_secret_file is not None
        return OAuth2ClientCredentials(auth.token_url, auth.client_id, auth.client_secret_file, auth.scope,
                                       auth.refresh_margin_seconds, verify=verify)
    if auth.kind == "google":
        assert auth.service_account_file is not None
        return GoogleServiceAccount(auth.service_account_file, auth.scope, auth.refresh_margin_seconds)
    if auth.kind == "aws-sigv4":
        assert auth.access_key_id is not None and auth.secret_key_file is not None and auth.region is not None
        return AwsSigV4(auth.access_key_id, auth.secret_key_file, auth.session_token_file, auth.region, auth.service)
    return NoAuth()
