"""The web service on a real uvicorn: health and readiness, the JSON API, /metrics parsed by
prometheus_client's parser, a segmentation preview, the dashboard in headless Chromium (it shows
the queue and a preview, logs no console error, and its retry button queues a failing delivery
again), the bearer token off loopback, and `serve`'s metrics summed over its processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from threading import Event
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pynetdicom import AE

from ai.phantom import make_phantom
from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError
from dicom_node.flow.worker import Worker
from dicom_node.service.node import Node
from dicom_node.tools.orthanc import free_port
from dicom_node.tools.synthetic import write_volume_series
from dicom_node.web.app import create_app

from ..conftest import TEST_SCU, config_dict, new_postgres_database
from ..support import processes
from ..support.peers import stop_process, wait_for
from ..tools.test_viewer import CHROMIUM, CHROMIUM_ARGS

DOWN = free_port()  # nobody listens here: deliveries to "viewer" fail


def send(port: int, files: list[Path]) -> list[int]:
    ae = AE(ae_title=TEST_SCU)
    for path in files:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="AI_NODE")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(path).Status) for path in files]
    assoc.release()
    return statuses


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as (name, sorted labels) -> value, via prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def running(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A node with its web service, one analysed series (classical baseline) whose results
    cannot be delivered (the viewer is down); on the SQLite index (lease engine) and on a
    PostgreSQL one (procrastinate)."""
    from dicom_node.config import parse_config

    tmp = tmp_path_factory.mktemp("web")
    index = {"path": str(tmp / "index.sqlite")}
    if request.param == "postgresql":
        index["url"] = new_postgres_database(request.getfixturevalue("postgres_server"))
    config = parse_config(config_dict(
        tmp, index=index,
        peers=[{"name": "scu", "ae_title": TEST_SCU, "host": "127.0.0.1", "port": 1},
               {"name": "viewer", "ae_title": "VIEWER", "host": "127.0.0.1", "port": DOWN, "send": False}],
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline", "destinations": ["viewer"]}],
        pipelines={"baseline": {"kind": "classical"}},
        results={"path": str(tmp / "results")},
        jobs={"workers": 0},
        delivery={"retry_base_seconds": 300, "interval_seconds": 0.2},
        web={"enabled": True, "port": 0},
    ), "test")
    phantom = make_phantom(41, shape=(24, 64, 64), spacing=(3.0, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp / "series", seed=41)
    node = Node(config)
    node.start()
    try:
        assert node.web is not None
        # One process: its counters are the whole test session's; the checks take differences.
        baseline = metrics(httpx.get(f"http://127.0.0.1:{node.web.port}/metrics", timeout=30).text)
        assert send(node.port, files) == [0] * len(files)
        wait_for(lambda: node.index.query("SELECT 1 FROM jobs"), 30, "the series to be routed")
        worker = Worker(config)
        try:
            assert worker.run(Event(), burst=True) == 1
        finally:
            worker.close()
        wait_for(lambda: node.index.query("SELECT 1 FROM deliveries WHERE attempts > 0"), 30, "a failed delivery")
        yield {"node": node, "url": f"http://127.0.0.1:{node.web.port}", "files": files, "config": config,
               "baseline": baseline, "backend": request.param}
    finally:
        node.stop()


def test_health_ready_and_the_json_api(running: dict[str, Any]) -> None:
    url, files = running["url"], running["files"]
    series_uid = str(dcmread(files[0]).SeriesInstanceUID)
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/ready").json() == {"ready": True, "problems": []}
        [study] = client.get("/api/studies").json()
        assert study["study_uid"] == study_uid and study["series"][0]["instance_count"] == len(files)
        one = client.get(f"/api/studies/{study_uid}").json()
        assert one["study_uid"] == study_uid and [s["series_uid"] for s in one["series"]] == [series_uid]
        assert client.get("/api/studies/1.2.3").status_code == 404
        series = client.get(f"/api/series/{series_uid}").json()
        assert [(j["route"], j["state"]) for j in series["jobs"]] == [("ct", "done")]
        jobs = client.get("/api/jobs").json()
        assert jobs["counts"] == {"done": 1}
        assert client.post(f"/api/jobs/{jobs['jobs'][0]['id']}/retry").status_code == 409  # done, not dead
        failing = client.get("/api/deliveries", params={"state": "failing"}).json()["deliveries"]
        assert failing and all(d["peer"] == "viewer" and d["attempts"] >= 1 for d in failing)
        assert "Connection refused" in failing[0]["last_error"] or "could not" in failing[0]["last_error"].lower() \
            or failing[0]["last_error"]
        peers = {p["name"]: p for p in client.get("/api/peers").json()}
        assert peers["viewer"]["deliveries"].get("pending", 0) >= 1
        [route] = client.get("/api/routes").json()
        assert route["summary"].startswith("route ct: series rule, when Modality is one of CT")
        audit = client.get("/api/audit").json()
        assert any(r["event"] == "association" and r["instances_stored"] == len(files) for r in audit)
        png = client.get(f"/api/jobs/{jobs['jobs'][0]['id']}/preview.png")
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get("/api/jobs/999/preview.png").status_code == 404
        # The baseline's lung densitometry on the dashboard: this phantom's lungs run off the
        # scan's top, so the numbers are withheld and the page says why.
        page = client.get("/").text
        assert "lung density (3.0 mm)" in page and "withheld: the lungs reach the scan" in page, page[-3000:]


def test_metrics_parse_and_count_what_happened(running: dict[str, Any]) -> None:
    text = httpx.get(f"{running['url']}/metrics", timeout=30).text
    now, before = metrics(text), running["baseline"]
    samples = {key: value - before.get(key, 0) if key[0].endswith(("_total", "_count", "_sum")) else value
               for key, value in now.items()}
    count = len(running["files"])
    assert samples[("dicom_node_instances_received_total", (("calling_ae", TEST_SCU),))] == count
    stored = running["node"].index.query("SELECT sum(size) AS n FROM instances")[0]["n"]
    assert samples[("dicom_node_bytes_received_total", (("calling_ae", TEST_SCU),))] == stored
    assert samples[("dicom_node_cstore_seconds_count", ())] == count
    assert samples[("dicom_node_associations_total", (("outcome", "released"),))] >= 1
    assert samples[("dicom_node_jobs_finished_total", (("outcome", "done"), ("pipeline", "baseline")))] == 1
    assert samples[("dicom_node_job_stage_seconds_count", (("pipeline", "baseline"), ("stage", "pipeline")))] == 1
    assert samples[("dicom_node_delivery_failures_total", (("peer", "viewer"),))] >= 1
    assert samples[("dicom_node_jobs", (("state", "done"),))] == 1
    assert samples[("dicom_node_series", (("state", "complete"),))] == 1
    assert samples[("dicom_node_disk_free_bytes", (("path", str(running["config"].storage.path)),))] > 0


def test_the_dashboard_in_chromium_shows_the_queue_and_a_preview_and_its_retry_button_works(running: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    node: Node = running["node"]
    [delivery] = node.index.query("SELECT id, queued_at FROM deliveries WHERE object = 'seg'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
        page.goto(running["url"] + "/")
        assert page.locator("#job-counts").inner_text().strip() == "done: 1"
        assert "nothing queued or running" in page.locator("#queue").inner_text()
        preview = page.locator("img.preview")
        assert preview.count() == 1
        wait_for(lambda: page.evaluate("(img) => img.complete && img.naturalWidth > 0", preview.element_handle()), 30,
                 "the preview to load")
        assert page.evaluate("(img) => img.naturalWidth", preview.element_handle()) == 3 * 64  # three key slices
        page.locator(f"button[data-delivery='{delivery['id']}']").click()
        page.wait_for_load_state()
        assert page.url.rstrip("/") == running["url"]
        browser.close()
    [after] = node.index.query("SELECT queued_at FROM deliveries WHERE id = ?", (delivery["id"],))
    assert after["queued_at"] > delivery["queued_at"]  # queued again by the button
    assert problems == []


def test_a_token_guards_everything_but_health_when_set(running: dict[str, Any], tmp_path: Path,
                                                       make_config: Callable[..., NodeConfig]) -> None:
    from starlette.testclient import TestClient

    node: Node = running["node"]
    token = "0f3c6a1e9b7d4c2a8e5f1b3d7a9c0e2f"
    app = create_app(running["config"], node.index, token=token)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/api/studies").status_code == 401
        assert client.get("/api/studies", headers={"Authorization": "Bearer wrong-token-0000000"}).status_code == 401
        assert client.get("/api/studies", headers={"Cookie": f"dicom_node_token={token}"}).status_code == 401  # no cookie
        assert client.get("/api/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/", headers={"Accept": "text/html"}, follow_redirects=False).headers["location"] == "/login"
        assert client.post("/login", data={"token": "nope"}).status_code == 401
        signed_in = client.post("/login", data={"token": token}, follow_redirects=False)
        assert signed_in.status_code == 303 and "httponly" in signed_in.headers["set-cookie"].lower()
        assert client.get("/").status_code == 200  # the cookie now
    with pytest.raises(ConfigError, match="web.host 0.0.0.0 is reachable from other machines: set web.token_file"):
        make_config(web={"enabled": True, "host": "0.0.0.0"})
    (tmp_path / "token").write_text("0f3c6a1e9b7d4c2a8e5f1b3d")  # 96 bits
    with pytest.raises(ConfigError, match="the token has under 128 bits of randomness"):
        make_config(web={"enabled": True, "host": "0.0.0.0", "token_file": str(tmp_path / "token")}).web.token()


def test_serve_sums_the_metrics_of_its_processes(tmp_path: Path) -> None:
    """`dicom-node serve` with two listener processes: /metrics adds up what each counted."""
    port, web = free_port(), free_port()
    config = config_dict(tmp_path, node={"ae_title": "AI_NODE", "host": "127.0.0.1", "port": port, "workers": 2},
                         web={"enabled": True, "port": web}, logs={"format": "json"},
                         peers=[{"name": "scu", "ae_title": TEST_SCU, "host": "127.0.0.1", "port": 1},
                                {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": DOWN, "send": False}],
                         routes=[{"name": "archive", "match": {"modality": "CT"}, "forward": ["archive"]}])
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(path), "serve"], stdout=log,
                            stderr=subprocess.STDOUT)
    processes.watch(proc, log=tmp_path / "serve.log", name="dicom-node serve")
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{web}/ready"), 60, "serve's web service")
        files = [write_volume_series(make_phantom(50 + n, shape=(4, 32, 32), spacing=(3.0, 3.0, 3.0), liver_lesions=(0, 0),
                                                  lung_nodules=(0, 0)).volume, tmp_path / f"s{n}", seed=50 + n) for n in range(4)]
        # Four associations open at once: the hand-off gives each to the process with the fewest.
        associations = []
        for series in files:
            ae = AE(ae_title=TEST_SCU)
            ae.add_requested_context(dcmread(series[0]).SOPClassUID, dcmread(series[0]).file_meta.TransferSyntaxUID)
            associations.append((ae.associate("127.0.0.1", port, ae_title="AI_NODE"), series))
        for assoc, series in associations:
            assert assoc.is_established
            assert [int(assoc.send_c_store(path).Status) for path in series] == [0] * 4
        for assoc, _ in associations:
            assoc.release()
        samples = metrics(httpx.get(f"http://127.0.0.1:{web}/metrics", timeout=30).text)
        assert samples[("dicom_node_instances_received_total", (("calling_ae", TEST_SCU),))] == 16
        assert samples[("dicom_node_cstore_seconds_count", ())] == 16
        pids = {r["pid"] for r in (json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines())
                if r.get("event") == "association"}
        print(f"\nassociations served by listener processes {sorted(pids)}; /metrics counted 16 instances")
        assert len(pids) == 2

        # logs.format json: every log line is one JSON object carrying what it is about.
        def lines() -> list[dict[str, Any]]:
            text = (tmp_path / "serve.log").read_text()
            return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

        wait_for(lambda: any(r.get("peer") == "archive" for r in lines()), 30, "a JSON line about the failing forward")
        records = lines()
        assert any(r["message"] == "route archive: series rule, when Modality is one of CT (any case) -> forward to archive"
                   for r in records)  # one line per rule at start-up
        assert any("association" in r and r.get("calling_ae") == TEST_SCU for r in records)
        assert any(r.get("series_uid") and r.get("study_uid") and "forwards 4 instance(s)" in r["message"] for r in records)
        assert any(r.get("peer") == "archive" and r.get("job_key", "").startswith("forward:archive:") for r in records)
    finally:
        stop_process(proc, 30)
        log.close()


def _get(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
