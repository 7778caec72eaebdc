"""The analysis worker, in burst mode: a queued job becomes result files and outbox rows; a
series that is not a volume dead-letters its job at once; the CLI shows and retries jobs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from threading import Event

import pytest
import yaml
from pydicom import dcmread

from ai.phantom import make_phantom
from dicom_node.config import NodeConfig
from dicom_node.flow.jobs import JobQueue
from dicom_node.flow.outbox import Outbox
from dicom_node.flow.routing import route_completed
from dicom_node.flow.worker import Worker
from dicom_node.storage.header import read_header
from dicom_node.storage.index import Index, Outcome, Receipt
from dicom_node.tools.synthetic import write_volume_series

from ..support import processes

PEERS = [
    {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1},
    {"name": "viewer", "ae_title": "VIEWER", "host": "127.0.0.1", "port": 2, "send": False,
     "seg_encodings": ["labelmap", "binary-jpeg2000"]},
]


@pytest.fixture
def config(make_config: Callable[..., NodeConfig], tmp_path: Path) -> NodeConfig:
    return make_config(
        peers=PEERS,
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline", "destinations": ["sender", "viewer"]}],
        pipelines={"baseline": {"kind": "classical"}},
        results={"path": str(tmp_path / "results")},
    )


def index_series(index: Index, files: list[Path], calling_ae: str = "PACS") -> None:
    """Index files as if the listener had received them, then complete and route them."""
    for path in files:
        header = read_header(path)
        index.record_instance(header, path, path.stat().st_size, Receipt(calling_ae, "AI_NODE", "127.0.0.1", 0.0), Outcome.NEW)
    index.complete_stable(1000, 10, 30)


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    phantom = make_phantom(2, shape=(24, 64, 64), spacing=(3.0, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    return write_volume_series(phantom.volume, tmp_path / "series", seed=2)


def test_a_job_becomes_result_files_and_deliveries(config: NodeConfig, series: list[Path]) -> None:
    worker = Worker(config)
    index_series(worker.index, series)
    assert len(route_completed(worker.index, config, now=1000)) == 1
    assert worker.run(Event(), burst=True) == 1
    job = worker.jobs.list()[0]
    assert job["state"] == "done" and job["attempts"] == 1
    rows = {(d["object"], d["peer"]): json.loads(d["candidates"]) for d in Outbox(worker.index).list()}
    assert set(rows) == {("seg", "pacs"), ("sr", "pacs"), ("seg", "viewer"), ("sr", "viewer")}
    assert [c["variant"] for c in rows[("seg", "pacs")]] == ["binary"]
    assert [c["variant"] for c in rows[("seg", "viewer")]] == ["labelmap", "binary-jpeg2000", "binary"]
    # The SR a Label Map SEG travels with references that SEG; the others reference the BINARY one.
    viewer_sr = {c["variant"]: c for c in rows[("sr", "viewer")]}
    labelmap_seg = dcmread(rows[("seg", "viewer")][0]["path"])
    assert viewer_sr["labelmap"]["path"] != viewer_sr["binary"]["path"]
    assert labelmap_seg.SOPInstanceUID in str(dcmread(viewer_sr["labelmap"]["path"]))
    binary, j2k = (dcmread(c["path"]) for c in rows[("seg", "viewer")][1:])
    assert binary.SOPInstanceUID == j2k.SOPInstanceUID
    assert not any(p.name.endswith(".part") for p in Path(rows[("sr", "pacs")][0]["path"]).parent.iterdir())
    worker.close()


def test_a_series_that_is_not_a_volume_dead_letters_its_job(config: NodeConfig, series: list[Path]) -> None:
    worker = Worker(config)
    index_series(worker.index, series)
    route_completed(worker.index, config, now=1000)
    series[3].write_bytes(b"not DICOM any more")
    assert worker.run(Event(), burst=True) == 0
    job = worker.jobs.list()[0]
    assert job["state"] == "dead" and job["attempts"] == 1
    assert "not a readable DICOM file" in job["last_error"]
    assert Outbox(worker.index).list() == []
    worker.close()


def test_cli_jobs_lists_and_retries_a_dead_job(config: NodeConfig, series: list[Path], tmp_path: Path) -> None:
    worker = Worker(config)
    index_series(worker.index, series)
    route_completed(worker.index, config, now=1000)
    series[0].unlink()
    worker.run(Event(), burst=True)
    worker.close()
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    cli = [sys.executable, "-m", "dicom_node.cli", "--config", str(path)]

    shown = processes.run([*cli, "jobs", "--json"], timeout=60)
    assert shown.returncode == 0, shown.stderr
    jobs = json.loads(shown.stdout)["jobs"]
    assert [(j["id"], j["state"]) for j in jobs] == [(1, "dead")]
    table = processes.run([*cli, "jobs"], timeout=60)
    assert "dead" in table.stdout and "No such file" in table.stdout

    retried = processes.run([*cli, "jobs", "--retry", "1"], timeout=60)
    assert retried.returncode == 0 and "job 1 queued again" in retried.stdout
    again = processes.run([*cli, "jobs", "--retry", "1"], timeout=60)
    assert again.returncode == 1 and "not dead-lettered" in again.stderr
    assert JobQueue(Index(config.index.path)).list()[0]["state"] == "queued"

    burst = processes.run([*cli, "worker", "--burst"], timeout=120)
    assert burst.returncode == 0 and "0 job(s) done" in burst.stdout  # the file is still missing: dead again
    assert JobQueue(Index(config.index.path)).list()[0]["state"] == "dead"


def _declining_config(make_config: Callable[..., NodeConfig], tmp_path: Path, policy: str) -> NodeConfig:
    """A route whose only pipeline (ct-organs, phantoms only) will decline a 10 mm series."""
    return make_config(
        peers=PEERS,
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": ["organs", "baseline"],
                 "destinations": ["sender"], "on_not_applicable": policy}],
        pipelines={"organs": {"kind": "model", "model": "ct-organs", "device": "cpu"}, "baseline": {"kind": "classical"}},
        results={"path": str(tmp_path / "results")},
    )


@pytest.mark.parametrize("policy", ["report", "silent"])
def test_a_series_outside_every_domain_ends_not_applicable(make_config: Callable[..., NodeConfig], tmp_path: Path,
                                                           policy: str) -> None:
    """10 mm slices: both pipelines decline. The job ends "not applicable" (not failed, not
    retried) with each pipeline's reasons, in the job row, the audit trail and, by default,
    an SR to the destinations that says the AI looked and declined."""
    from dicom_node.storage.audit_chain import read_audit

    from ..results.test_results import dciodvfy_errors

    config = _declining_config(make_config, tmp_path, policy)
    phantom = make_phantom(4, shape=(12, 96, 96), spacing=(10.0, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path / "thick", seed=4)
    worker = Worker(config)
    index_series(worker.index, files)
    route_completed(worker.index, config, now=1000)
    assert worker.run(Event(), burst=True) == 1
    [job] = worker.jobs.list()
    assert job["state"] == "not applicable" and job["attempts"] == 1
    assert "organs (ct-organs 2.0.0): slices 10 mm thick" in job["last_error"]
    assert "baseline (ct-classical-baseline 2.1.0): slices 10 mm thick" in job["last_error"]
    assert worker.run(Event(), burst=True) == 0  # not retried
    [record] = [r for r in read_audit(config.audit.path) if r["event"] == "job_not_applicable"]
    assert [p["pipeline"] for p in record["pipelines"]] == ["organs", "baseline"]
    deliveries = Outbox(worker.index).list()
    worker.close()
    if policy == "silent":
        assert deliveries == []
        return
    assert [(d["object"], d["peer"]) for d in deliveries] == [("sr", "pacs")]
    path = Path(json.loads(deliveries[0]["candidates"])[0]["path"])
    sr = dcmread(path)
    assert str(sr.SeriesDescription) == "AI not analysed (ct-organs, ct-classical-baseline)"
    texts = [str(item.TextValue) for item in sr.ContentSequence[-1].ContentSequence]
    assert texts[0].startswith("not analysed by ct-organs 2.0.0: slices 10 mm thick")
    assert len(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence) == 12
    assert dciodvfy_errors(sr, path) == []


def test_jobs_shows_why_a_job_was_not_applicable(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    config = _declining_config(make_config, tmp_path, "silent")
    phantom = make_phantom(4, shape=(12, 96, 96), spacing=(10.0, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    worker = Worker(config)
    index_series(worker.index, write_volume_series(phantom.volume, tmp_path / "thick", seed=4))
    route_completed(worker.index, config, now=1000)
    worker.run(Event(), burst=True)
    worker.close()
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    shown = processes.run([sys.executable, "-m", "dicom_node.cli", "jobs", "--config", str(path)], timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "not applicable" in shown.stdout and "slices 10 mm thick" in shown.stdout


def test_the_job_records_which_pipeline_of_a_list_ran(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    """A route's list is tried in order; a 3 mm phantom is ct-organs' own domain, the job row
    says so (and jobs shows "organs,baseline -> organs")."""
    config = _declining_config(make_config, tmp_path, "report")
    phantom = make_phantom(6, shape=(60, 128, 128), spacing=(3.0, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    worker = Worker(config)
    index_series(worker.index, write_volume_series(phantom.volume, tmp_path / "thin", seed=6))
    route_completed(worker.index, config, now=1000)
    assert worker.run(Event(), burst=True) == 1
    [job] = worker.jobs.list()
    worker.close()
    assert (job["state"], job["pipeline"], job["ran_pipeline"]) == ("done", "organs,baseline", "organs")


@pytest.mark.parametrize("pipeline", ["organs", "baseline"])
def test_the_uncertainty_map_goes_out_when_asked_and_the_model_has_one(make_config: Callable[..., NodeConfig],
                                                                      tmp_path: Path, pipeline: str) -> None:
    """results.uncertainty_map: a model's run adds a Parametric Map for every destination; the
    classical baseline has no probabilities, so nothing is sent in its name."""
    config = make_config(
        peers=PEERS,
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": pipeline, "destinations": ["sender", "viewer"]}],
        pipelines={"organs": {"kind": "model", "model": "ct-organs", "device": "cpu"}, "baseline": {"kind": "classical"}},
        results={"path": str(tmp_path / "results"), "uncertainty_map": True, "map_series_number": 9103},
    )
    phantom = make_phantom(6, shape=(60, 128, 128), spacing=(3.0, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    worker = Worker(config)
    index_series(worker.index, write_volume_series(phantom.volume, tmp_path / "thin", seed=6))
    route_completed(worker.index, config, now=1000)
    assert worker.run(Event(), burst=True) == 1
    rows = {(d["object"], d["peer"]): json.loads(d["candidates"]) for d in Outbox(worker.index).list()}
    worker.close()
    maps = {key: value for key, value in rows.items() if key[0] == "uncertainty"}
    if pipeline == "baseline":
        assert maps == {} and ("seg", "pacs") in rows
        return
    assert set(maps) == {("uncertainty", "pacs"), ("uncertainty", "viewer")}
    [candidate] = maps[("uncertainty", "pacs")]
    assert candidate["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.30"
    pm = dcmread(candidate["path"])
    assert pm.SeriesNumber == 9103 and str(pm.SeriesDescription) == "AI uncertainty (ct-organs v2.0.0)"
