"""The node's STOW-RS endpoint (dicomweb/stow_server.py) through a real uvicorn, pushed to by
dicomweb-client (and by hand-made bodies for what a well-behaved client never sends)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient

from dicom_node.config import NodeConfig
from dicom_node.storage.audit import AuditLog
from dicom_node.storage.audit_chain import read_audit
from dicom_node.storage.index import Index
from dicom_node.tools.synthetic import write_ct_series
from dicom_node.web.app import WebServer

TOKEN = "5b0d6f3e1c9a4b7d8e2f0a6c4e8b1d3f"
OTHER = "9e7c5a3b1d0f2e4c6a8b0d2f4e6a8c0b"


@pytest.fixture
def stow_config(make_config: Callable[..., NodeConfig], tmp_path: Path) -> NodeConfig:
    (tmp_path / "uploader.token").write_text(TOKEN + "\n")
    (tmp_path / "other.token").write_text(OTHER + "\n")
    return make_config(
        web={"enabled": True, "port": 0, "request_timeout_seconds": 2.0,
             "stow_max_request_bytes": 8 * 2**20, "stow_max_instance_bytes": 2**20},
        peers=[{"name": "uploader", "stow": True, "stow_token_file": str(tmp_path / "uploader.token")},
               {"name": "other", "stow": True, "stow_token_file": str(tmp_path / "other.token"), "ae_title": "OTHER_SITE"}])


@pytest.fixture
def served(stow_config: NodeConfig, tmp_path: Path) -> Iterator[dict[str, Any]]:
    index = Index(stow_config.index.location)
    audit = AuditLog(stow_config.audit.path)
    web = WebServer(stow_config, index, audit=audit)
    web.start()
    yield {"url": f"http://127.0.0.1:{web.port}", "index": index, "config": stow_config, "port": web.port}
    web.stop()
    index.close()
    audit.close()


def _client(url: str, token: str = TOKEN, path: str = "/dicomweb") -> DICOMwebClient:
    client = DICOMwebClient(url + path, headers={"Authorization": f"Bearer {token}"})
    client.set_http_retry_params(retry=False)
    return client


def _leftovers(config: NodeConfig) -> list[Path]:
    return [p for p in (config.storage.path / ".incoming").iterdir()] if (config.storage.path / ".incoming").exists() else []


def test_a_series_pushed_by_dicomweb_client_is_durable_indexed_and_audited(served: dict[str, Any], tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "ct", 5, rows=64, columns=64)
    answer = _client(served["url"]).store_instances([pydicom.dcmread(f) for f in files])
    assert len(answer.ReferencedSOPSequence) == 5 and "FailedSOPSequence" not in answer
    index: Index = served["index"]
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        row = index.instance(uid)
        assert row is not None and Path(row["path"]).exists()
        assert pydicom.dcmread(row["path"]).PixelData == pydicom.dcmread(path).PixelData
    rows = index.query("SELECT DISTINCT calling_ae FROM instances")
    assert [r["calling_ae"] for r in rows] == ["UPLOADER"]  # routing rules see the client as the source
    record = [r for r in read_audit(served["config"].audit.path) if r.get("protocol") == "STOW-RS"][-1]
    assert record["peer"] == "uploader" and record["instances_stored"] == 5 and record["studies"]
    assert _leftovers(served["config"]) == []
    # The same again: duplicates, still 200, nothing new.
    again = _client(served["url"]).store_instances([pydicom.dcmread(f) for f in files])
    assert len(again.ReferencedSOPSequence) == 5
    assert index.query("SELECT count(*) AS n FROM instances")[0]["n"] == 5


def test_a_client_named_in_the_path_needs_its_own_token(served: dict[str, Any], tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "ct", 1, rows=32, columns=32)
    ds = [pydicom.dcmread(files[0])]
    assert len(_client(served["url"], OTHER, "/dicomweb/other").store_instances(ds).ReferencedSOPSequence) == 1
    assert served["index"].query("SELECT calling_ae FROM instances")[0]["calling_ae"] == "OTHER_SITE"
    with pytest.raises(requests.HTTPError) as refused:
        _client(served["url"], TOKEN, "/dicomweb/other").store_instances(ds)  # uploader's token on other's path
    assert refused.value.response.status_code == 401


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope-nope-nope"}, {"Authorization": "Basic dTpw"}],
                         ids=["missing", "wrong", "not-bearer"])
def test_no_token_no_entry(served: dict[str, Any], tmp_path: Path, headers: dict[str, str]) -> None:
    files = write_ct_series(tmp_path / "ct", 1, rows=32, columns=32)
    body, content_type = _multipart([files[0].read_bytes()])
    response = requests.post(served["url"] + "/dicomweb/studies", data=body,
                             headers={**headers, "Content-Type": content_type}, timeout=30)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert served["index"].query("SELECT count(*) AS n FROM instances")[0]["n"] == 0
    rejected = [r for r in read_audit(served["config"].audit.path) if r.get("outcome") == "rejected"]
    assert rejected and "STOW-RS" in rejected[-1]["reason"]


def _multipart(parts: list[bytes], boundary: str = "b0undary", part_type: str = "application/dicom") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: " + part_type.encode() + b"\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _post(served: dict[str, Any], body: bytes, content_type: str, path: str = "/dicomweb/studies") -> requests.Response:
    return requests.post(served["url"] + path, data=body, timeout=30,
                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type})


def test_bad_parts_are_refused_each_with_its_reason_and_the_rest_stored(served: dict[str, Any], tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "ct", 2, rows=32, columns=32)
    other_study = write_ct_series(tmp_path / "ct2", 1, rows=32, columns=32, seed=7)
    good = files[0].read_bytes()
    no_uid = pydicom.dcmread(files[1])
    del no_uid.SOPInstanceUID
    no_uid.save_as(tmp_path / "no_uid.dcm")
    big = pydicom.dcmread(files[1])
    big.PixelData = b"\0" * (2**20 + 10)
    big.Rows, big.Columns = 1024, 512 + 5
    big.save_as(tmp_path / "big.dcm")
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    body, content_type = _multipart([good, b"this is not DICOM at all", (tmp_path / "no_uid.dcm").read_bytes(),
                                     (tmp_path / "big.dcm").read_bytes(), other_study[0].read_bytes()])
    response = _post(served, body, content_type, f"/dicomweb/studies/{study}")
    assert response.status_code == 202, response.text
    answer = pydicom.Dataset.from_json(response.json())
    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [str(pydicom.dcmread(files[0]).SOPInstanceUID)]
    reasons = [int(i.FailureReason) for i in answer.FailedSOPSequence]
    assert reasons == [0xC000, 0xC000, 0xA700, 0xA900]
    warnings = response.headers["Warning"]
    assert "not a DICOM" in warnings or "DICOM" in warnings
    assert "over the limit" in warnings and "not " + study in warnings
    assert served["index"].query("SELECT count(*) AS n FROM instances")[0]["n"] == 1
    assert _leftovers(served["config"]) == []
    only_bad = _post(served, *_multipart([b"junk"]))
    assert only_bad.status_code == 409


@pytest.mark.parametrize(("body", "content_type", "status"), [
    (b"{}", "application/json", 415),
    (b"--x\r\nContent-Type: application/dicom\r\n\r\nDICM", 'multipart/related; type="application/dicom"; boundary=x', 400),
    (b"no boundary here at all", 'multipart/related; type="application/dicom"; boundary=x', 400),
    (b"", 'multipart/related; type="application/dicom"', 400),
    (b"--x--\r\n", 'multipart/related; type="application/dicom+json"; boundary=x', 415),
], ids=["json", "unterminated", "garbage", "no-boundary", "metadata-type"])
def test_a_body_that_is_not_a_dicom_multipart_is_refused_and_leaves_nothing(served: dict[str, Any], body: bytes,
                                                                             content_type: str, status: int) -> None:
    response = _post(served, body, content_type)
    assert response.status_code == status, response.text
    assert served["index"].query("SELECT count(*) AS n FROM instances")[0]["n"] == 0
    assert _leftovers(served["config"]) == []


def test_a_body_over_the_request_limit_gets_413(served: dict[str, Any], tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "ct", 20, rows=256, columns=256)  # ~130 KB each, 20: 2.6 MB
    body, content_type = _multipart([f.read_bytes() for f in files] * 4)  # ~10 MB, over 8 MiB
    response = _post(served, body, content_type)
    assert response.status_code == 413
    assert served["index"].query("SELECT count(*) AS n FROM instances")[0]["n"] == 0


def test_a_client_that_stops_mid_body_leaves_nothing_stored(served: dict[str, Any], tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "ct", 3, rows=64, columns=64)
    body, content_type = _multipart([f.read_bytes() for f in files])
    head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", served["port"])) as sock:
        sock.sendall(head + body[: len(body) * 2 // 3])  # two parts whole, the third cut
        time.sleep(0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = [r for r in read_audit(served["config"].audit.path) if r.get("protocol") == "STOW-RS"]
        if records:
            break
        time.sleep(0.1)
    assert records and records[-1]["outcome"] == "aborted", records
    assert served["index"].query("SELECT count(*) AS n FROM instances")[0]["n"] == 0
    assert _leftovers(served["config"]) == []
    assert json.loads(requests.get(served["url"] + "/health", timeout=5).text)["status"] == "ok"  # still serving
