"""A small DICOMweb archive for the tests, on a free loopback port, that checks what it receives:
how the request signed in (each kind of dicomweb.auth, recomputed or verified independently of
the node's code: botocore's signer for SigV4, the service account's public key for Google's
JWT), and what a STOW-RS body holds. It answers STOW-RS as told (stored, refused per instance,
or an HTTP error), QIDO-RS with the studies it stored, and serves an OAuth2 token endpoint.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from typing import Any

import pydicom

Check = Callable[[dict[str, str], str, str, bytes], str]  # headers, method, path, body -> '' or why refused


@dataclass
class Archive:
    """What the archive saw and how it answers."""

    check: Check = lambda headers, method, path, body: ""
    #: SOP Instance UID -> Failure Reason to refuse it with (202, or 409 when all are refused).
    refuse: dict[str, int] = field(default_factory=dict)
    #: An HTTP status to answer every STOW-RS with (0: store).
    fail_with: int = 0
    stored: dict[str, pydicom.Dataset] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    refused_auth: list[str] = field(default_factory=list)
    #: OAuth2: client id -> secret; tokens issued (token -> expiry time).
    oauth_clients: dict[str, str] = field(default_factory=dict)
    token_lifetime: float = 3600.0
    issued: dict[str, float] = field(default_factory=dict)
    #: Google: the service account's public key (PEM) and e-mail, checked on the JWT assertion.
    google_key_pem: bytes = b""
    google_email: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def valid_token(self, token: str) -> bool:
        with self.lock:
            return token in self.issued and self.issued[token] > time.time()


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a multipart body (test-side: independent of the node's streaming parser)."""
    boundary = next(p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary="))
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        parts.append(data[:-2] if data.endswith(b"\r\n") else data)
    return parts


def _handler(archive: Archive) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = bytearray()
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(data)
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

        def _send(self, status: int, body: bytes = b"", content_type: str = "application/dicom+json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._serve("GET", b"")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST", self._body())

        def _serve(self, method: str, body: bytes) -> None:
            headers = {k: v for k, v in self.headers.items()}
            path = self.path
            archive.requests.append((method, path, headers))
            if path == "/token":
                self._token(urllib.parse.parse_qs(body.decode()))
                return
            why = archive.check(headers, method, path, body)
            if why:
                archive.refused_auth.append(why)
                self._send(401, json.dumps({"error": why}).encode(), "application/json")
                return
            if method == "GET" and path.split("?")[0].endswith("/studies"):
                studies = {ds.StudyInstanceUID: ds for ds in archive.stored.values()}
                answer = []
                for ds in studies.values():
                    item = pydicom.Dataset()
                    item.StudyInstanceUID, item.PatientID = ds.StudyInstanceUID, ds.get("PatientID", "")
                    answer.append(item.to_json_dict())
                self._send(200 if answer else 204, json.dumps(answer).encode() if answer else b"")
                return
            if method == "POST" and "/studies" in path:
                self._stow(body, headers.get("Content-Type", ""))
                return
            self._send(404, b"{}", "application/json")

        def _stow(self, body: bytes, content_type: str) -> None:
            if archive.fail_with:
                self._send(archive.fail_with, b'{"error": "told to fail"}', "application/json")
                return
            answer = pydicom.Dataset()
            stored, failed = [], []
            for part in split_multipart(body, content_type):
                ds = pydicom.dcmread(BytesIO(part))
                item = pydicom.Dataset()
                item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
                if str(ds.SOPInstanceUID) in archive.refuse:
                    item.FailureReason = archive.refuse[str(ds.SOPInstanceUID)]
                    failed.append(item)
                else:
                    archive.stored[str(ds.SOPInstanceUID)] = ds
                    stored.append(item)
            if stored:
                answer.ReferencedSOPSequence = stored
            if failed:
                answer.FailedSOPSequence = failed
            self._send(200 if not failed else 202 if stored else 409, json.dumps(answer.to_json_dict()).encode())

        def _token(self, form: dict[str, list[str]]) -> None:
            grant = form.get("grant_type", [""])[0]
            if grant == "client_credentials":
                client, secret = form.get("client_id", [""])[0], form.get("client_secret", [""])[0]
                if archive.oauth_clients.get(client) != secret or not secret:
                    self._send(401, b'{"error": "invalid_client"}', "application/json")
                    return
            elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
                # google-auth addresses its assertion to Google's token endpoint wherever it posts it.
                why = _verify_jwt(form.get("assertion", [""])[0], archive, "https://oauth2.googleapis.com/token")
                if why:
                    self._send(400, json.dumps({"error": "invalid_grant", "why": why}).encode(), "application/json")
                    return
            else:
                self._send(400, b'{"error": "unsupported_grant_type"}', "application/json")
                return
            token = f"tok-{len(archive.issued) + 1}-{time.monotonic_ns()}"
            with archive.lock:
                archive.issued[token] = time.time() + archive.token_lifetime
            self._send(200, json.dumps({"access_token": token, "token_type": "Bearer",
                                        "expires_in": archive.token_lifetime}).encode(), "application/json")

    return Handler


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _verify_jwt(assertion: str, archive: Archive, audience: str) -> str:
    """Why a Google service account's JWT assertion is not valid ('' when it is): RS256 over
    header.payload with the account's public key, issuer, audience, scope and lifetime."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        head, payload, signature = assertion.split(".")
        key = serialization.load_pem_public_key(archive.google_key_pem)
        key.verify(_b64(signature), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
        claims = json.loads(_b64(payload))
    except (ValueError, InvalidSignature) as exc:
        return f"bad assertion: {type(exc).__name__}"
    if json.loads(_b64(head)).get("alg") != "RS256":
        return "not RS256"
    if claims.get("iss") != archive.google_email or claims.get("aud") != audience:
        return f"issuer or audience wrong: {claims.get('iss')}, {claims.get('aud')}"
    if "cloud-healthcare" not in claims.get("scope", "") or not claims.get("iat", 0) <= time.time() + 5 <= claims.get("exp", 0) + 5:
        return "scope or lifetime wrong"
    return ""


class DicomwebArchive:
    """The archive, served on a free loopback port until stop()."""

    def __init__(self, archive: Archive | None = None) -> None:
        self.archive = archive or Archive()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.archive))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="dicomweb-archive", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
