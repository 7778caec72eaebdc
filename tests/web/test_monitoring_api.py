"""The monitoring endpoints over HTTP: inference records as JSON, CSV and Parquet (filtered),
drift as JSON, the /monitoring page with its charts, corrections; all behind the web token."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from dicom_node.config import NodeConfig
from dicom_node.storage.index import Index
from dicom_node.storage.inferences import Inference, Scanner, record
from dicom_node.web.app import create_app

TOKEN = "5b1d0c7e2a9f4e8d6c3b1a0f9e8d7c6b"


@pytest.fixture
def client(make_config: Callable[..., NodeConfig]) -> TestClient:
    config = make_config()
    index = Index(config.index.location)
    with index.transaction() as db:
        for n in range(25):
            accepted = n % 5 != 0
            record(db, Inference(n, f"job-{n}", "ct", "organs", "ct-organs", "2.0.0", "2.25.7", "1.2", f"1.2.{n}",
                                 "analysed" if accepted else "declined", accepted, 1.0 + n / 50, Scanner("ACME", "Scan 64"),
                                 0.97 if accepted else None, {"volumes_ml": {"lungs": 2500.0 + n}}), 1_700_000_000.0 + n * 3600)
    return TestClient(create_app(config, index, token=TOKEN), base_url="http://127.0.0.1",
                      headers={"Authorization": f"Bearer {TOKEN}"})


def test_records_as_json_csv_and_parquet(client: TestClient) -> None:
    rows = client.get("/api/inferences").json()
    assert len(rows) == 25 and rows[0]["job_key"] == "job-24"  # newest first
    assert rows[0]["details"]["volumes_ml"]["lungs"] == 2524.0 and rows[0]["scanner"] == "ACME Scan 64"
    assert len(client.get("/api/inferences", params={"outcome": "declined"}).json()) == 5
    assert len(client.get("/api/inferences", params={"since": 1_700_000_000.0 + 20 * 3600}).json()) == 5
    assert client.get("/api/inferences", params={"model": "other"}).json() == []
    table = list(csv.DictReader(io.StringIO(client.get("/api/inferences.csv").text)))
    assert len(table) == 25 and table[-1]["outcome"] == "declined" and table[0]["device_uid"] == "2.25.7"
    parquet = pq.read_table(io.BytesIO(client.get("/api/inferences.parquet").content))
    assert parquet.num_rows == 25 and "gate_distance" in parquet.column_names


def test_drift_page_and_chart(client: TestClient) -> None:
    [drift] = client.get("/api/drift").json()
    assert drift["model"] == "ct-organs" and drift["scanner"] == "ACME Scan 64"
    assert drift["judged"] is False  # 25 records in the reference window, none recent
    page = client.get("/monitoring").text
    assert "ct-organs 2.0.0 on ACME Scan 64" in page and "too few records to judge" in page
    assert page.count('class="state done">analysed') == 20 and page.count(">declined<") == 5  # the recent records
    chart = client.get("/monitoring/chart.png", params={"model": "ct-organs", "version": "2.0.0", "scanner": "ACME Scan 64"})
    assert chart.status_code == 200 and chart.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/monitoring/chart.png", params={"model": "nope"}).status_code == 404
    assert client.get("/api/corrections").json() == []


def test_the_token_guards_monitoring(client: TestClient) -> None:
    for path in ("/api/inferences", "/api/inferences.csv", "/api/drift", "/monitoring"):
        assert client.get(path, headers={"Authorization": "Bearer wrong-token-0000000000"}).status_code in (401, 303), path
