"""``/api/requests`` (web/requests_api.py): made, listed and read; refused with a reason when a
field is missing or wrong; behind the web token like the rest of /api."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from starlette.testclient import TestClient

from dicom_node.config import NodeConfig
from dicom_node.storage.index import Index
from dicom_node.web.app import create_app

TOKEN = "0f3c6a1e9b7d4c2a8e5f1b3d7a9c0e2f"
STUDY = "1.2.826.0.1.3680043.8.498.77"


def test_requests_are_made_listed_and_refused_with_a_reason(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    config = make_config(peers=[{"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 1, "query": True},
                                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 2}],
                         routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline"}],
                         pipelines={"baseline": {"kind": "classical"}})
    index = Index(config.index.location)
    try:
        with TestClient(create_app(config, index, token=TOKEN), base_url="http://127.0.0.1:8090") as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert client.post("/api/requests", json={"study_uid": STUDY, "source": "archive"}).status_code == 401
            made = client.post("/api/requests", headers=auth,
                               json={"study_uid": STUDY, "source": "archive", "route": "ct", "destinations": ["pacs"]})
            assert made.status_code == 201
            body = made.json()
            assert (body["state"], body["study_uid"], body["destinations"], body["origin"]) == \
                ("retrieving", STUDY, ["pacs"], "api")
            assert client.get(f"/api/requests/{body['id']}", headers=auth).json()["route"] == "ct"
            assert [r["id"] for r in client.get("/api/requests", headers=auth).json()] == [body["id"]]
            assert client.get("/api/requests/999", headers=auth).status_code == 404
            for bad, why in [(b"not json", "not JSON"), (b"[1]", "a JSON object"), (b'{"study_uid": "1.2", "x": 1}', "unknown: x"),
                             (b'{"study_uid": "1.2"}', "source"), (b'{"study_uid": "1.2", "source": "pacs"}', "query: true"),
                             (b'{"study_uid": 5, "source": "archive"}', "are text"),
                             (b'{"study_uid": "1.2", "source": "archive", "destinations": "pacs"}', "a list of peer names")]:
                answer = client.post("/api/requests", headers={**auth, "Content-Type": "application/json"}, content=bad)
                assert answer.status_code == 400 and why in answer.json()["error"], (bad, answer.text)
            assert len(client.get("/api/requests", headers=auth).json()) == 1
    finally:
        index.close()
