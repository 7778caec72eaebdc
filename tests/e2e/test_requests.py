"""Analysis on request, end to end: a radiologist's "analyse this study" reaches the node's API,
the node retrieves the study from Orthanc (C-MOVE into its own listener, or WADO-RS from a
polled DICOMweb archive), runs the asked route and delivers the SEG and SR to Orthanc; the
request's state says how far it got, or why it failed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pydicom
import pytest

from ai.phantom import make_phantom
from dicom_node.config import parse_config
from dicom_node.flow.polling import poll_once
from dicom_node.service.node import Node
from dicom_node.tools.orthanc import find_orthanc
from dicom_node.tools.synthetic import write_volume_series

from ..conftest import config_dict
from ..support.peers import free_port, wait_for
from ..support.qr_peers import DICOMWEB_PLUGIN, start_qr_orthanc

pytestmark = [pytest.mark.slow, pytest.mark.skipif(find_orthanc() is None or not DICOMWEB_PLUGIN.exists(),
                                                   reason="needs orthanc and orthanc-dicomweb")]


def _node_config(tmp_path: Path, node_port: int, orthanc: object, **peer: object) -> dict:
    return config_dict(
        tmp_path,
        node={"port": node_port},
        web={"enabled": True, "port": 0},
        peers=[{"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.port,  # type: ignore[attr-defined]
                "send": True, "receive": True, "query": True, **peer}],
        # The rule would take the study by itself too: the request holds it from the rules (one job, not two).
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline",
                 "destinations": ["pacs"]}],
        pipelines={"baseline": {"kind": "classical"}},
        results={"path": str(tmp_path / "results")},
        jobs={"workers": 1, "lease_seconds": 30, "poll_seconds": 0.2},
        delivery={"retry_base_seconds": 0.5, "retry_max_seconds": 2, "interval_seconds": 0.2},
        completion={"series_stable_seconds": 1, "study_stable_seconds": 2, "sweep_interval_seconds": 0.2},
    )


def _results_in(orthanc: object, study: str) -> set[str]:
    return {s["MainDicomTags"].get("Modality") for s in orthanc.series_of_study(study)}  # type: ignore[attr-defined]


def test_a_requested_study_is_retrieved_analysed_and_delivered(tmp_path: Path) -> None:
    phantom = make_phantom(5, shape=(24, 96, 96), spacing=(2.5, 2.0, 2.0), liver_lesions=(1, 1), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path / "phantom", seed=5)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    node_port = free_port()
    orthanc = start_qr_orthanc(tmp_path / "orthanc", "AI_NODE", node_port)
    node = Node(parse_config(_node_config(tmp_path, node_port, orthanc), "e2e"))
    node.start()
    try:
        for path in files:
            orthanc.upload(path)
        assert node.web is not None
        api = httpx.Client(base_url=f"http://127.0.0.1:{node.web.port}", timeout=30)
        refused = api.post("/api/requests", json={"study_uid": study, "source": "pacs", "route": "nope"})
        assert refused.status_code == 400 and "no route named 'nope'" in refused.json()["error"]
        made = api.post("/api/requests", json={"study_uid": study, "source": "pacs", "route": "ct"})
        assert made.status_code == 201, made.text
        request_id = made.json()["id"]
        seen: list[str] = []

        def delivered() -> bool:
            state = api.get(f"/api/requests/{request_id}").json()["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            return state in ("delivered", "failed")

        wait_for(delivered, 180, "the request to be delivered")
        final = api.get(f"/api/requests/{request_id}").json()
        assert final["state"] == "delivered", final
        assert "retrieved" in final["detail"] and len(final["jobs"]) == 1
        assert {"SEG", "SR"} <= _results_in(orthanc, study)
        assert seen[0] in ("retrieving", "waiting", "queued", "running")  # it went through its states
        # The routing rules held the study for the request: no other job ran.
        assert [r["route"] for r in node.index.query("SELECT route FROM jobs")] == ["ct"]
        assert "Requests" in api.get("/").text
        # A study the archive does not have: the request fails and says why.
        missing = api.post("/api/requests", json={"study_uid": "1.2.3.4.5.6.7", "source": "pacs", "route": "ct"}).json()
        wait_for(lambda: api.get(f"/api/requests/{missing['id']}").json()["state"] == "failed", 60, "the request to fail")
        assert api.get(f"/api/requests/{missing['id']}").json()["detail"] == "pacs has no study 1.2.3.4.5.6.7"
    finally:
        node.stop()
        orthanc.stop()


def test_a_polled_dicomweb_archive_hands_each_new_study_in_once(tmp_path: Path) -> None:
    phantom = make_phantom(6, shape=(16, 64, 64), spacing=(2.5, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path / "phantom", seed=6)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    node_port = free_port()
    orthanc = start_qr_orthanc(tmp_path / "orthanc", "AI_NODE", node_port, dicomweb=True)
    data = _node_config(tmp_path, node_port, orthanc)
    data["peers"].append({"name": "cloud", "query": True, "dicomweb": {"url": f"{orthanc.base_url}/dicom-web"}})
    data["sources"] = [{"peer": "cloud", "query": {"ModalitiesInStudy": "CT"}, "interval_seconds": 3600,
                        "lookback_days": 36500, "route": "ct"}]
    node = Node(parse_config(data, "e2e"))
    node.start()
    try:
        for path in files:
            orthanc.upload(path)
        first = poll_once(node.config, node.index, node.config.sources[0])
        assert len(first) == 1
        assert poll_once(node.config, node.index, node.config.sources[0]) == []  # seen once, not taken twice
        wait_for(lambda: {"SEG", "SR"} <= _results_in(orthanc, study), 180, "the results of the polled study")
        rows = node.index.query("SELECT calling_ae, count(*) AS n FROM instances WHERE study_uid = ? GROUP BY calling_ae",
                                (study,))
        assert [(r["calling_ae"], r["n"]) for r in rows] == [("CLOUD", len(files))]  # by WADO-RS, marked with its source
        time.sleep(0.5)
        request = node.index.query("SELECT origin, state FROM requests WHERE id = ?", (first[0],))[0]
        assert request["origin"] == "poll"
    finally:
        node.stop()
        orthanc.stop()


def test_a_route_with_priors_hands_the_patients_last_study_to_its_module(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import sys

    from dicom_node.tools.synthetic import write_ct_series

    modules = Path(__file__).parents[1] / "support" / "modules"
    record = tmp_path / "priors.json"
    monkeypatch.setenv("PRIORS_RECORD", str(record))  # the worker processes inherit it
    studies = {}
    for name, seed, date in (("now", 21, "20261201"), ("prior", 22, "20250101"), ("older", 23, "20230101")):
        files = write_ct_series(tmp_path / name, 8, seed=seed, patient_id="PRIOR1")  # 512x512: a body the gate takes
        for path in files:
            ds = pydicom.dcmread(path)
            ds.StudyDate = date
            ds.save_as(path)
        studies[name] = (files, str(pydicom.dcmread(files[0]).StudyInstanceUID))
    node_port = free_port()
    orthanc = start_qr_orthanc(tmp_path / "orthanc", "AI_NODE", node_port)
    data = _node_config(tmp_path, node_port, orthanc)
    data["routes"] = [{"name": "compare", "match": {"modality": "CT"}, "pipeline": "with-priors", "destinations": ["pacs"],
                       "priors": {"count": 1}}]
    data["pipelines"] = {"with-priors": {"kind": "command", "command": [sys.executable, str(modules / "priors_module.py")],
                                         "domain": {"modality": ["CT"]}}}
    node = Node(parse_config(data, "e2e"))
    node.start()
    try:
        for files, _ in studies.values():
            for path in files:
                orthanc.upload(path)
        now_uid, prior_uid = studies["now"][1], studies["prior"][1]
        api = httpx.Client(base_url=f"http://127.0.0.1:{node.web.port}", timeout=30)  # type: ignore[union-attr]
        made = api.post("/api/requests", json={"study_uid": now_uid, "source": "pacs", "route": "compare"}).json()
        wait_for(lambda: api.get(f"/api/requests/{made['id']}").json()["state"] in ("delivered", "failed", "not applicable"),
                 180, "the request with priors")
        assert api.get(f"/api/requests/{made['id']}").json()["state"] == "delivered", api.get(f"/api/requests/{made['id']}").text
        seen = json.loads(record.read_text())["priors"]
        assert [(p["rank"], p["study_uid"], p["study_date"], p["files_in_folder"]) for p in seen] == \
            [(1, prior_uid, "20250101", 8)]
        assert {"SEG", "SR"} <= _results_in(orthanc, now_uid)
        # The prior came in (by C-MOVE, from the worker) and was held from the rules: one job only.
        assert node.index.query("SELECT count(*) AS n FROM instances WHERE study_uid = ?", (prior_uid,))[0]["n"] == 8
        time.sleep(2.5)  # past series_stable_seconds: the prior's series complete, and are not routed
        assert [r["study_uid"] for r in node.index.query("SELECT study_uid FROM jobs")] == [now_uid]
    finally:
        node.stop()
        orthanc.stop()
