"""A radiologist's edit of the node's SEG, stored back to the node, is recorded as a correction:
per-segment Dice and surface distance equal to what numpy computes on the two masks, the case
kept with its source series; the node's own SEG coming back is not a correction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from threading import Event

import numpy as np
import pytest
from scipy import ndimage

from ai.phantom import make_phantom
from ai.pipeline import ClassicalCTPipeline
from dicom_node.config import NodeConfig
from dicom_node.flow.routing import route_completed
from dicom_node.flow.worker import Worker
from dicom_node.monitoring.corrections import recent_corrections, scan, surface_distance
from dicom_node.results import ResultSettings, build_segmentation
from dicom_node.storage.header import read_header
from dicom_node.storage.index import Outcome, Receipt
from dicom_node.storage.volume import load_series
from dicom_node.tools.synthetic import write_volume_series

from ..flow.test_worker import index_series


def _receive(worker: Worker, path: Path, when: float) -> None:
    worker.index.record_instance(read_header(path), path, path.stat().st_size, Receipt("VIEWER", "AI_NODE", "127.0.0.1", when),
                                 Outcome.NEW)


def test_an_edited_seg_is_measured_against_the_node_s(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    config = make_config(routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline", "destinations": []}],
                         pipelines={"baseline": {"kind": "classical"}}, results={"path": str(tmp_path / "results")},
                         monitoring={"cases_path": str(tmp_path / "cases")})
    phantom = make_phantom(3, shape=(30, 80, 80), spacing=(3.0, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path / "series", seed=3)
    worker = Worker(config)
    index_series(worker.index, files)
    route_completed(worker.index, config, now=1000)
    assert worker.run(Event(), burst=True) == 1
    source = load_series(files)
    findings = ClassicalCTPipeline().run(source.volume)  # what the node found (the same rules, the same answer)
    node = findings.label_map
    # The radiologist's edit: the lungs one voxel tighter, the body segment deleted, bone kept.
    edited = node.copy()
    lungs = node == 2
    edited[lungs & ~ndimage.binary_erosion(lungs)] = 0
    edited[edited == 1] = 0
    corrected = build_segmentation(source, replace(findings, label_map=edited, measurements=()), "the-radiologist", ResultSettings())
    path = tmp_path / "corrected.dcm"
    corrected.save_as(path)
    _receive(worker, path, 2000.0)
    node_seg = next((tmp_path / "results").rglob("seg-binary.dcm"))
    _receive(worker, node_seg, 2001.0)  # the node's own SEG, back from the PACS
    found, newest = scan(worker.index, config)
    assert newest == 2001.0 and len(found) == 1
    assert scan(worker.index, config, 0.0)[0] == []  # recorded once
    [row] = recent_corrections(worker.index)
    [event] = worker.index.query("SELECT payload FROM events WHERE type = 'correction.recorded'")
    worker.close()
    assert '"lungs"' in event["payload"]
    segments = {s["name"]: s for s in row["segments"]}
    assert set(segments) == {"body", "lungs", "bone"}
    assert segments["body"]["dice"] == 0.0 and segments["body"]["corrected_ml"] == 0.0
    assert segments["bone"]["dice"] == 1.0 and segments["bone"]["mean_surface_mm"] == 0.0
    a, b = node == 2, edited == 2
    assert segments["lungs"]["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert segments["lungs"]["mean_surface_mm"] == pytest.approx(surface_distance(a, b, source.volume.spacing))
    assert 0 < segments["lungs"]["mean_surface_mm"] < 3.0 * np.sqrt(3)  # about one 3 mm voxel
    assert row["mean_dice"] == pytest.approx(np.mean([s["dice"] for s in row["segments"]]))
    assert (row["model"], row["model_version"]) == ("ct-classical-baseline", ClassicalCTPipeline.version)
    case = Path(row["case_path"])
    assert len(list((case / "source").iterdir())) == len(files) and (case / "corrected-seg.dcm").exists()


def test_a_case_kept_de_identified_still_trains(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    """monitoring.cases_deidentify: the kept case holds no patient identity, and its SEG still
    refers to its series (the site key maps UIDs alike), so it loads as a training case."""
    import os

    import pydicom

    from ai.registry import ModelRegistry
    from dicom_node.monitoring.training_cases import load_case

    key = tmp_path / "site.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    config = make_config(routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline", "destinations": []}],
                         pipelines={"baseline": {"kind": "classical"}}, results={"path": str(tmp_path / "results")},
                         deidentification={"key_file": str(key), "profiles": {"training": {"options": []}}},
                         monitoring={"cases_path": str(tmp_path / "cases"), "cases_deidentify": "training"})
    phantom = make_phantom(8, shape=(30, 80, 80), spacing=(3.0, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path / "series", seed=8, patient_name="Doe^Jane", patient_id="MRN4711")
    worker = Worker(config)
    index_series(worker.index, files)
    route_completed(worker.index, config, now=1000)
    assert worker.run(Event(), burst=True) == 1
    source = load_series(files)
    findings = ClassicalCTPipeline().run(source.volume)
    corrected = build_segmentation(source, replace(findings, measurements=()), "the-radiologist", ResultSettings())
    path = tmp_path / "corrected.dcm"
    corrected.save_as(path)
    _receive(worker, path, 2000.0)
    [row] = scan(worker.index, config)[0]
    worker.close()
    kept = sorted(Path(row["case_path"]).rglob("*.dcm"))
    assert len(kept) == len(files) + 1
    for item in kept:
        ds = pydicom.dcmread(item)
        assert "Doe" not in str(ds.get("PatientName", "")) and ds.get("PatientID") != "MRN4711"
    case = load_case(Path(row["case_path"]), list(ModelRegistry().get("ct-organs").data.labels))
    assert case is not None and case.labels.shape == source.volume.shape
    assert (case.labels == 1).sum() == (findings.label_map == 2).sum()  # the baseline's lungs, as ct-organs' label 1
