"""The web service against a hostile browser or client (web/guard.py): through the ASGI test
client for the rules, and through a real uvicorn for what only a socket shows (slow and silent
connections, header size, the concurrency limit, HTTPS)."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError
from dicom_node.storage.audit import AuditLog
from dicom_node.storage.audit_chain import read_audit
from dicom_node.storage.index import Index
from dicom_node.web.app import COOKIE, WebServer, create_app
from dicom_node.web.guard import Sessions

TOKEN = "0f3c6a1e9b7d4c2a8e5f1b3d7a9c0e2f"  # 128 bits, hex


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    idx = Index(tmp_path / "index.sqlite")
    yield idx
    idx.close()


@pytest.fixture
def web_config(make_config: Callable[..., NodeConfig], tmp_path: Path) -> NodeConfig:
    return make_config(web={"enabled": True, "port": 0, "allowed_hosts": ["ai-node.hospital.example"],
                            "request_timeout_seconds": 1.0, "max_concurrency": 3, "max_body_bytes": 4096})


def _client(config: NodeConfig, index: Index, token: str | None = None, audit: AuditLog | None = None,
            base_url: str = "http://127.0.0.1:8090") -> TestClient:
    return TestClient(create_app(config, index, token=token, audit=audit), base_url=base_url)


@pytest.mark.parametrize("token", [None, TOKEN], ids=["loopback", "token"])
def test_only_the_nodes_own_names_are_served(web_config: NodeConfig, index: Index, token: str | None) -> None:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    with _client(web_config, index, token) as client:
        for host in ("127.0.0.1:8090", "localhost:8090", "[::1]:8090", "ai-node.hospital.example"):
            assert client.get("/api/studies", headers={**auth, "Host": host}).status_code == 200, host
        # A DNS-rebinding page: the browser sends its own name for 127.0.0.1.
        refused = client.get("/api/studies", headers={**auth, "Host": "attacker.example:8090"})
        assert refused.status_code == 400 and "not one of this node's names" in refused.json()["error"]
        assert client.get("/", headers={**auth, "Host": "attacker.example"}).status_code == 400
        assert client.get("/health", headers={"Host": "10.1.2.3:8090"}).status_code == 200  # probes use the IP


@pytest.mark.parametrize("token", [None, TOKEN], ids=["loopback", "token"])
def test_a_cross_site_post_changes_nothing(web_config: NodeConfig, index: Index, token: str | None) -> None:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    with _client(web_config, index, token) as client:
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                        {"Origin": "http://attacker.example"}, {"Origin": "null"},
                        {"Origin": "http://127.0.0.1.attacker.example:8090"}):
            answer = client.post("/api/jobs/1/retry", headers={**auth, **headers})
            assert answer.status_code == 403, headers
            assert "may not change anything" in answer.json()["error"]
        # The dashboard's own form (same origin), and a script without a browser's headers.
        same = client.post("/api/jobs/1/retry", headers={**auth, "Origin": "http://127.0.0.1:8090",
                                                         "Sec-Fetch-Site": "same-origin"})
        assert same.status_code == 409
        assert client.post("/api/jobs/1/retry", headers=auth).status_code == 409
        assert client.get("/api/jobs", headers={**auth, "Sec-Fetch-Site": "cross-site"}).status_code == 200  # reads: CORS


def test_every_answer_carries_the_security_headers(web_config: NodeConfig, index: Index) -> None:
    with _client(web_config, index) as client:
        for path in ("/", "/api/jobs", "/health", "/api/nothing-here"):
            headers = client.get(path).headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"], path
            assert "script-src" not in headers["content-security-policy"]  # default-src 'none': no scripts at all
            assert headers["x-frame-options"] == "DENY"
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "same-origin"
            assert headers["cache-control"] == "no-store"


def test_bodies_over_the_limit_are_refused_with_413(web_config: NodeConfig, index: Index) -> None:
    with _client(web_config, index, TOKEN) as client:
        assert client.post("/login", data={"token": "x" * 5000}).status_code == 413
        # No Content-Length (chunked): cut off once the limit is passed.
        answer = client.post("/login", content=iter([b"token=", b"x" * 3000, b"x" * 3000]))
        assert answer.status_code == 413


def test_client_errors_are_4xx_never_500(web_config: NodeConfig, index: Index) -> None:
    with _client(web_config, index) as client:
        huge = "9" * 25
        assert client.post(f"/api/jobs/{huge}/retry").status_code == 404
        assert client.post(f"/api/deliveries/{huge}/retry").status_code == 404
        assert client.get(f"/api/jobs/{huge}/preview.png").status_code == 404
        assert client.get("/api/studies/" + "1" * 300).status_code == 404
        assert client.get("/api/jobs", params={"limit": "x" * 100}).status_code == 200
        assert client.post("/api/jobs/0/retry").status_code == 404


def test_the_session_cookie_is_signed_expiring_and_not_the_token(web_config: NodeConfig, index: Index) -> None:
    with _client(web_config, index, TOKEN) as client:
        signed_in = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
        assert signed_in.status_code == 303
        cookie = signed_in.cookies[COOKIE]
        assert TOKEN not in cookie and TOKEN not in signed_in.headers["set-cookie"]
        set_cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "max-age=43200" in set_cookie
        assert "secure" not in set_cookie  # plain HTTP on loopback
        client.cookies.clear()
        assert client.get("/api/jobs", headers={"Cookie": f"{COOKIE}={cookie}"}).status_code == 200
        forged = cookie[:-1] + ("0" if cookie[-1] != "0" else "1")
        assert client.get("/api/jobs", headers={"Cookie": f"{COOKIE}={forged}"}).status_code == 401
        expiry, rest = cookie.split(".", 1)
        later = f"{int(expiry) + 10**6}.{rest}"  # a longer life, not signed so
        assert client.get("/api/jobs", headers={"Cookie": f"{COOKIE}={later}"}).status_code == 401
    sessions = Sessions(TOKEN, 60)
    assert sessions.valid(sessions.issue(1000.0), 1059.0) and not sessions.valid(sessions.issue(1000.0), 1061.0)
    assert not Sessions("another-token-entirely-0123456789", 60).valid(sessions.issue(1000.0), 1001.0)
    with _client(web_config, index, TOKEN, base_url="https://127.0.0.1:8090") as client:
        assert "secure" in client.post("/login", data={"token": TOKEN}, follow_redirects=False).headers["set-cookie"].lower()


def test_failed_sign_ins_are_throttled_and_audited(web_config: NodeConfig, index: Index, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", "AI_NODE")
    with _client(web_config, index, TOKEN, audit) as client:
        assert [client.post("/login", data={"token": f"guess-{n}"}).status_code for n in range(5)] == [401] * 5
        throttled = client.post("/login", data={"token": TOKEN})  # even the right token waits now
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 200
    audit.close()
    alerts = [r for r in read_audit(tmp_path / "audit.jsonl") if r["event"] == "security_alert"]
    assert len(alerts) == 5 and {a["alert"] for a in alerts} == {"login_failed"}
    assert alerts[-1]["address"] == "testclient" and "5 within 300 s" in alerts[-1]["description"]
    assert alerts[0]["dicom"]["EventIdentification"]["EventID"]["csd-code"] == "110113"


@pytest.mark.parametrize(("token", "weak"), [("a" * 64, True), ("0f3c6a1e9b7d4c2a8e5f1b3d", True),
                                             ("password1234567890", True), (TOKEN, False),
                                             ("Zq8-vR2xK_pL5mN7tY1wQ3e", False)])
def test_weak_tokens_are_refused_at_start(make_config: Callable[..., NodeConfig], tmp_path: Path, token: str,
                                          weak: bool) -> None:
    (tmp_path / "token").write_text(token)
    config = make_config(web={"enabled": True, "host": "0.0.0.0", "token_file": str(tmp_path / "token")})
    if weak:
        with pytest.raises(ConfigError, match="under 128 bits"):
            config.web.token()
    else:
        assert config.web.token() == token


@pytest.fixture
def server(web_config: NodeConfig, index: Index) -> Iterator[WebServer]:
    web = WebServer(web_config, index)
    web.start()
    yield web
    web.stop()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except (TimeoutError, ConnectionResetError):
        return False


def test_slow_and_silent_connections_are_closed_and_an_honest_client_is_served(server: WebServer) -> None:
    port = server.port
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # max_concurrency 3
    try:
        # Every slot is held: an honest request is answered 503, not left hanging.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 503
        trickle = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        for byte in b"GET /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n":  # one byte each 0.1 s, never finished
            try:
                trickle.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - started > 3:
                break
        assert _closed_within(trickle, 3), "a trickled request held its connection past request_timeout_seconds"
        assert time.monotonic() - started < 3.5
        assert all(_closed_within(s, 3) for s in silent), "silent connections were not closed"
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        for sock in silent:
            sock.close()


def test_headers_over_the_limit_are_refused(server: WebServer) -> None:
    answer = httpx.get(f"http://127.0.0.1:{server.port}/api/jobs", headers={"X-Padding": "x" * 20000}, timeout=5)
    assert answer.status_code in (400, 431)


def test_the_dashboard_over_https_with_web_tls(make_config: Callable[..., NodeConfig], index: Index, tmp_path: Path) -> None:
    from ..support.certs import Authority

    ca = Authority("web", tmp_path / "pki")
    issued = ca.issue("ai-node.hospital.example", ips=["127.0.0.1"])
    config = make_config(web={"enabled": True, "port": 0, "tls": {"certificate": str(issued.certificate),
                                                                  "private_key": str(issued.private_key)}})
    web = WebServer(config, index)
    web.start()
    try:
        context = ssl.create_default_context(cafile=str(ca.pem))
        with httpx.Client(verify=context, timeout=10) as client:
            answer = client.get(f"https://127.0.0.1:{web.port}/api/jobs")
            assert answer.status_code == 200 and answer.headers["x-frame-options"] == "DENY"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{web.port}/api/jobs", timeout=5)  # no plain HTTP on that port
    finally:
        web.stop()
