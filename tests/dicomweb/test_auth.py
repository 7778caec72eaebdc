"""Each way of signing in to a DICOMweb peer (dicomweb/auth.py), checked by an archive that
verifies it independently (tests/support/dicomweb_server.py): Basic and bearer compared with
the files, OAuth2 tokens issued and expired by its token endpoint, a Google service account's
JWT verified with the account's public key, AWS Signature V4 recomputed with botocore."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dicom_node.config import Peer
from dicom_node.dicomweb.client import DicomwebPeerClient
from dicom_node.errors import PeerError
from dicom_node.tools.synthetic import write_ct_series
from tests.support.dicomweb_server import Archive, DicomwebArchive


@pytest.fixture
def archive() -> Iterator[DicomwebArchive]:
    served = DicomwebArchive()
    yield served
    served.stop()


def _peer(url: str, **auth: Any) -> Peer:
    return Peer(name="cloud", dicomweb={"url": url, "auth": auth, "timeout_seconds": 10})


def _store_one(client: DicomwebPeerClient, tmp_path: Path, seed: int = 0) -> str:
    path = write_ct_series(tmp_path / f"ct{seed}", 1, rows=16, columns=16, seed=seed)[0]
    ds = pydicom.dcmread(path)
    answer = client.store([ds])
    assert answer.error == "" and answer.stored == {str(ds.SOPInstanceUID)}, answer
    return str(ds.SOPInstanceUID)


def _bearer(headers: dict[str, str]) -> str:
    value = headers.get("Authorization", "")
    return value[7:] if value.startswith("Bearer ") else ""


def test_basic(archive: DicomwebArchive, tmp_path: Path) -> None:
    (tmp_path / "password").write_text("s3cret-Pa55\n")
    expected = "Basic " + base64.b64encode(b"ai-node:s3cret-Pa55").decode()
    archive.archive.check = lambda h, m, p, b: "" if h.get("Authorization") == expected else "basic wrong"
    client = DicomwebPeerClient(_peer(archive.url, kind="basic", user="ai-node", password_file=str(tmp_path / "password")))
    assert client.check() == 0
    _store_one(client, tmp_path)
    (tmp_path / "password").write_text("changed")  # the file is read per request: a wrong one is refused
    answer = client.store([pydicom.dcmread(write_ct_series(tmp_path / "x", 1, rows=16, columns=16, seed=3)[0])])
    assert "HTTP 401" in answer.error and not answer.retriable
    assert archive.archive.refused_auth == ["basic wrong"]


def test_bearer_from_a_file_that_is_rotated(archive: DicomwebArchive, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    allowed = {"first-token"}
    archive.archive.check = lambda h, m, p, b: "" if _bearer(h) in allowed else "bearer wrong"
    client = DicomwebPeerClient(_peer(archive.url, kind="bearer", token_file=str(token_file)))
    _store_one(client, tmp_path)
    allowed.clear()
    allowed.add("second-token")
    token_file.write_text("second-token")
    _store_one(client, tmp_path, seed=1)
    assert archive.archive.refused_auth == []
    token_file.unlink()
    with pytest.raises(PeerError, match="cannot read the token file"):
        client.check()


def test_oauth2_client_credentials_fetched_and_renewed_before_expiry(archive: DicomwebArchive, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("client-secret-value")
    archive.archive.oauth_clients = {"ai-node": "client-secret-value"}
    archive.archive.token_lifetime = 3.0
    archive.archive.check = lambda h, m, p, b: "" if archive.archive.valid_token(_bearer(h)) else "no valid token"
    client = DicomwebPeerClient(_peer(archive.url, kind="oauth2", token_url=f"http://127.0.0.1:{archive.port}/token",
                                      client_id="ai-node", client_secret_file=str(tmp_path / "secret"),
                                      refresh_margin_seconds=1.5))
    _store_one(client, tmp_path)
    client.check()
    assert len(archive.archive.issued) == 1  # kept while valid
    time.sleep(1.8)  # within the margin of its expiry: a new one before the next request
    _store_one(client, tmp_path, seed=1)
    assert len(archive.archive.issued) == 2 and archive.archive.refused_auth == []
    (tmp_path / "secret").write_text("wrong")
    time.sleep(1.8)
    answer = client.store([pydicom.dcmread(write_ct_series(tmp_path / "x", 1, rows=16, columns=16, seed=5)[0])])
    assert "answered 401" in answer.error and answer.retriable  # the token endpoint refused: tried again later


def test_google_service_account(archive: DicomwebArchive, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = "ai-node@hospital-project.iam.gserviceaccount.com"
    (tmp_path / "sa.json").write_text(json.dumps({
        "type": "service_account", "project_id": "hospital-project", "private_key_id": "k1",
        "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode(),
        "client_email": email, "client_id": "1", "token_uri": f"http://127.0.0.1:{archive.port}/token"}))
    archive.archive.google_key_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    archive.archive.google_email = email
    archive.archive.check = lambda h, m, p, b: "" if archive.archive.valid_token(_bearer(h)) else "no valid token"
    client = DicomwebPeerClient(_peer(archive.url, kind="google", service_account_file=str(tmp_path / "sa.json")))
    _store_one(client, tmp_path)
    client.check()
    assert len(archive.archive.issued) == 1 and archive.archive.refused_auth == []
    # Another account's key: the archive's token endpoint refuses the assertion.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    archive.archive.google_key_pem = other.public_key().public_bytes(serialization.Encoding.PEM,
                                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    fresh = DicomwebPeerClient(_peer(archive.url, kind="google", service_account_file=str(tmp_path / "sa.json")))
    with pytest.raises(PeerError, match="Google sign-in failed"):
        fresh.check()


_SIGV4 = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                    r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})")


def _sigv4_check(secret: str, region: str, service: str) -> Any:
    """The archive's side: the signature recomputed from what arrived (the signed headers only)."""
    def check(headers: dict[str, str], method: str, path: str, body: bytes) -> str:
        found = _SIGV4.fullmatch(headers.get("Authorization", ""))
        if found is None:
            return "no SigV4 Authorization header"
        key_id, _, their_region, their_service, signed, signature = found.groups()
        if (their_region, their_service) != (region, service):
            return "wrong scope"
        lower = {k.lower(): v for k, v in headers.items()}
        request = AWSRequest(method=method, url=f"http://{lower['host']}{path}", data=body,
                             headers={name: lower[name] for name in signed.split(";")})
        request.context["timestamp"] = lower["x-amz-date"]
        signer = SigV4Auth(Credentials(key_id, secret), service, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        return "" if expected == signature else "signature mismatch"
    return check


def test_aws_signature_v4(archive: DicomwebArchive, tmp_path: Path) -> None:
    (tmp_path / "aws-secret").write_text("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    archive.archive.check = _sigv4_check("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "eu-west-1", "medical-imaging")
    client = DicomwebPeerClient(_peer(archive.url, kind="aws-sigv4", access_key_id="AKIDEXAMPLE",
                                      secret_key_file=str(tmp_path / "aws-secret"), region="eu-west-1"))
    _store_one(client, tmp_path)  # a POST with a body: the body's hash is in the signature
    client.check()  # a GET with a query string
    assert archive.archive.refused_auth == []
    (tmp_path / "aws-secret").write_text("not-the-secret")
    answer = client.store([pydicom.dcmread(write_ct_series(tmp_path / "x", 1, rows=16, columns=16, seed=9)[0])])
    assert "401" in answer.error and archive.archive.refused_auth == ["signature mismatch"]


def test_no_sign_in_and_an_archive_that_is_down(tmp_path: Path) -> None:
    served = DicomwebArchive(Archive())
    url = served.url
    client = DicomwebPeerClient(_peer(url))
    _store_one(client, tmp_path)
    served.stop()
    client.close()  # a kept-alive connection would still reach the stopped server's handler thread
    answer = DicomwebPeerClient(_peer(url)).store([pydicom.dcmread(write_ct_series(tmp_path / "x", 1, rows=16, columns=16, seed=2)[0])])
    assert answer.retriable and "cannot reach cloud" in answer.error
