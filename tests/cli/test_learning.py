"""The learning loop from the command line: corrected cases become a fine-tuned version that runs
in shadow beside the active one (its results compared, never sent), ``models promote`` makes it
serve with its shadow record shown, ``models rollback`` returns to the version before."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from threading import Event

import yaml

from ai.phantom import make_phantom
from ai.registry import ModelRegistry
from ai.types import Findings
from dicom_node.config import NodeConfig
from dicom_node.flow.routing import route_completed
from dicom_node.flow.worker import Worker
from dicom_node.monitoring.records import RecordFilter, query
from dicom_node.results import ResultSettings, build_segmentation
from dicom_node.storage.index import Index
from dicom_node.storage.volume import load_series
from dicom_node.tools.synthetic import write_volume_series

from ..flow.test_worker import index_series
from ..support import processes

SMALL = ["--steps", "3", "--phantoms", "1", "--phantom-shape", "40", "72", "72", "--evaluate-phantoms", "0"]


def _corrected_case(folder: Path, seed: int) -> Path:
    """A case folder as corrections.py keeps one: the source series and a corrected SEG."""
    phantom = make_phantom(seed, shape=(40, 72, 72), spacing=(2.5, 2.5, 2.5))
    files = write_volume_series(phantom.volume, folder / "source", seed=seed)
    labels = ModelRegistry().get("ct-organs").label_infos()
    seg = build_segmentation(load_series(files), Findings(phantom.labels, labels, (), {}, {}, "radiologist", "1"),
                             f"edit-{seed}", ResultSettings())
    seg.save_as(folder / "corrected-seg.dcm")
    return folder


def _cli(config_path: Path, *args: str) -> processes.subprocess.CompletedProcess:  # type: ignore[name-defined]
    return processes.run([sys.executable, "-m", "dicom_node.cli", *args, "--config", str(config_path)], timeout=600)


def _job(worker: Worker, config: NodeConfig, tmp_path: Path, seed: int) -> list[dict[str, object]]:
    phantom = make_phantom(seed, shape=(40, 72, 72), spacing=(2.5, 2.5, 2.5), liver_lesions=(0, 0), lung_nodules=(0, 0))
    index_series(worker.index, write_volume_series(phantom.volume, tmp_path / f"series-{seed}", seed=seed))
    route_completed(worker.index, config, now=1000 + seed)
    assert worker.run(Event(), burst=True) == 1
    job_id = max(int(j["id"]) for j in worker.jobs.list())
    return [r for r in query(worker.index, RecordFilter()) if r["job_id"] == job_id]


def test_train_shadow_promote_rollback(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    config = make_config(routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "organs", "destinations": []}],
                         pipelines={"organs": {"kind": "model", "model": "ct-organs", "device": "cpu"}},
                         results={"path": str(tmp_path / "results")}, monitoring={"cases_path": str(tmp_path / "cases")})
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    index = Index(config.index.location)
    with index.transaction() as db:
        for n, seed in enumerate((7401, 7402)):
            case = _corrected_case(tmp_path / "cases" / f"case-{seed}", seed)
            db.execute("INSERT INTO corrections(created_at, source_series_uid, corrected_sop_uid, model, segments, case_path) "
                       "VALUES(?, ?, ?, 'ct-organs', '[]', ?)", (1.0 + n, f"1.2.{seed}", f"1.2.9.{seed}", str(case)))
    index.close()
    trained = _cli(path, "train", "--from-corrections", "--base", "ct-organs", *SMALL)
    assert trained.returncode == 0, processes.describe_run(trained)
    assert "ct-organs 2.1.0 written to" in trained.stdout and "running in shadow" in trained.stdout
    listed = json.loads(_cli(path, "models", "versions", "--json").stdout)
    assert [(r["version"], r["state"]) for r in listed] == [("2.1.0", "shadow")]
    assert Path(listed[0]["path"]).name == "ct-organs-2.1.0"

    worker = Worker(config)
    try:
        rows = _job(worker, config, tmp_path, 7411)
        by_outcome = {r["outcome"]: r for r in rows}
        assert by_outcome["analysed"]["model_version"] == "2.0.0"
        shadow = by_outcome["shadow"]
        assert shadow["model_version"] == "2.1.0" and shadow["gate_applicable"]
        assert set(shadow["details"]["agreement"]) >= {"lungs", "liver"}  # compared with the active version's masks
        assert not list((tmp_path / "results").rglob("*2.1.0*"))  # nothing of the shadow's is written or sent

        promoted = _cli(path, "models", "promote", "ct-organs")
        assert promoted.returncode == 0, processes.describe_run(promoted)
        assert "ct-organs 2.1.0 is active (was the built-in card)" in promoted.stdout and '"series": 1' in promoted.stdout
        assert [r["model_version"] for r in _job(worker, config, tmp_path, 7412)] == ["2.1.0"]  # no shadow left

        rolled = _cli(path, "models", "rollback", "ct-organs")
        assert rolled.returncode == 0 and "the built-in card serves again" in rolled.stdout
        assert [r["model_version"] for r in _job(worker, config, tmp_path, 7413)] == ["2.0.0"]
        again = _cli(path, "models", "rollback", "ct-organs")
        assert again.returncode == 1 and "nothing to roll back" in again.stderr
    finally:
        worker.close()
