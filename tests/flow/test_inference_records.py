"""Every inference is recorded in the transaction that ends its job: the pipelines that declined
(with the gate's reasons), the one that ran (confidence, volumes, timings, its Device UID as the
result objects carry it), the scanner; a failure too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from threading import Event

import pydicom

from ai.phantom import make_phantom
from ai.pipeline import ClassicalCTPipeline
from ai.registry import ModelRegistry
from dicom_node.config import NodeConfig
from dicom_node.flow.routing import route_completed
from dicom_node.flow.worker import Worker
from dicom_node.monitoring.records import RecordFilter, query
from dicom_node.results.identity import Algorithm
from dicom_node.tools.synthetic import write_volume_series

from .test_worker import _declining_config, index_series


def _scanner(files: list[Path]) -> list[Path]:
    for path in files:
        ds = pydicom.dcmread(path)
        ds.Manufacturer, ds.ManufacturerModelName, ds.StationName, ds.ProtocolName = "ACME", "Scan 64", "CT1", "Chest routine"
        ds.save_as(path)
    return files


def test_the_declining_and_the_running_pipeline_are_both_recorded(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    """0.8 mm slices: ct-organs (1-5 mm) declines them, the baseline (0.5-5 mm) takes them."""
    config = _declining_config(make_config, tmp_path, "report")
    phantom = make_phantom(2, shape=(40, 64, 64), spacing=(0.8, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    worker = Worker(config)
    index_series(worker.index, _scanner(write_volume_series(phantom.volume, tmp_path / "series", seed=2)))
    route_completed(worker.index, config, now=1000)
    assert worker.run(Event(), burst=True) == 1
    rows = list(reversed(query(worker.index, RecordFilter())))
    [job] = worker.jobs.list()
    worker.close()
    assert [(r["pipeline"], r["outcome"], r["gate_applicable"]) for r in rows] == [("organs", "declined", False),
                                                                                   ("baseline", "analysed", True)]
    declined, ran = rows
    assert all(r["job_id"] == job["id"] and r["series_uid"] == job["series_uid"] for r in rows)
    assert (declined["model"], declined["model_version"]) == ("ct-organs", "2.0.0")
    organs = ModelRegistry().get("ct-organs")
    assert declined["device_uid"] == Algorithm("ct-organs", "2.0.0", weights_digest=_digest(organs.weights_path)).device_uid
    assert any("slices 0.8 mm thick" in reason for reason in declined["details"]["reasons"]), declined["details"]
    assert declined["gate_distance"] is not None and declined["delivery"] == "-"
    assert (ran["model"], ran["model_version"]) == ("ct-classical-baseline", ClassicalCTPipeline.version)
    assert (ran["manufacturer"], ran["scanner_model"], ran["station"], ran["protocol"]) == ("ACME", "Scan 64", "CT1", "Chest routine")
    assert ran["scanner"] == "ACME Scan 64"
    assert ran["details"]["volumes_ml"]["lungs"] > 0 and set(ran["details"]["timings"]) >= {"load", "gate", "pipeline"}
    assert ran["delivery"] == "pending"  # queued in the outbox, not sent yet
    # The record names the weights as the result objects do.
    seg = pydicom.dcmread(next((tmp_path / "results").rglob("seg-binary.dcm")))
    ours = [item for item in seg.ContributingEquipmentSequence if item.Manufacturer == "dicom-node"]
    assert ran["device_uid"] == ours[0].DeviceUID == Algorithm(
        "ct-classical-baseline", ClassicalCTPipeline.version, weights_digest=ClassicalCTPipeline().weights_digest).device_uid


def _digest(path: Path) -> str:
    from ai.digest import file_digest

    return file_digest(path)


def test_a_series_outside_every_domain_is_recorded_declined_twice(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    config = _declining_config(make_config, tmp_path, "silent")
    phantom = make_phantom(4, shape=(12, 96, 96), spacing=(10.0, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    worker = Worker(config)
    index_series(worker.index, write_volume_series(phantom.volume, tmp_path / "thick", seed=4))
    route_completed(worker.index, config, now=1000)
    worker.run(Event(), burst=True)
    rows = list(reversed(query(worker.index, RecordFilter(outcome="declined"))))
    worker.close()
    assert [(r["model"], r["outcome"]) for r in rows] == [("ct-organs", "declined"), ("ct-classical-baseline", "declined")]
    assert all(any("slices 10 mm thick" in reason for reason in r["details"]["reasons"]) for r in rows)


def test_a_failed_job_is_recorded_with_its_error(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    """A series with a missing slice is not a volume: the job is dead at once, and the record
    says so (no model ran: the record names the route's pipelines)."""
    config = _declining_config(make_config, tmp_path, "silent")
    phantom = make_phantom(5, shape=(12, 64, 64), spacing=(3.0, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path / "gap", seed=5)
    files[5].unlink()
    worker = Worker(config)
    index_series(worker.index, [f for f in files if f.exists()])
    route_completed(worker.index, config, now=1000)
    worker.run(Event(), burst=True)
    [row] = query(worker.index, RecordFilter())
    worker.close()
    assert row["outcome"] == "failed" and row["pipeline"] == "organs,baseline"
    assert "gap" in row["details"]["error"] or "spacing" in row["details"]["error"], row["details"]
    assert row["details"]["final"] is True
