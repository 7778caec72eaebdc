"""End to end with Orthanc as the PACS: Orthanc C-STOREs a phantom CT study to our node, the
node analyses it and sends a SEG and an SR back, and Orthanc holds them in the same study.

Orthanc runs on free loopback ports from a configuration the test writes; our node is one of
its DicomModalities and Orthanc is the node's peer ``pacs``.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ai.phantom import Phantom, make_phantom
from ai.training import dice
from dicom_node.config import NodeConfig, parse_config
from dicom_node.flow.jobs import JobQueue
from dicom_node.service.node import Node
from dicom_node.tools.synthetic import write_volume_series

from ..conftest import config_dict
from ..support import processes
from ..support.peers import Orthanc, free_port, start_orthanc, wait_for

pytestmark = pytest.mark.slow

PHANTOM_SEED = 11


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(PHANTOM_SEED, shape=(48, 128, 128), spacing=(2.5, 2.0, 2.0), liver_lesions=(1, 1), lung_nodules=(0, 0))


@pytest.fixture(scope="module")
def phantom_files(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_volume_series(phantom.volume, tmp_path_factory.mktemp("phantom"), seed=PHANTOM_SEED)


def node_config(tmp_path: Path, orthanc_port: int, **overrides: Any) -> NodeConfig:
    sections: dict[str, Any] = {
        "peers": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port, "send": True, "receive": True}],
        "routes": [{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline", "destinations": ["sender"]}],
        "pipelines": {"baseline": {"kind": "classical"}},
        "results": {"path": str(tmp_path / "results")},
        "jobs": {"workers": 1, "lease_seconds": 30, "poll_seconds": 0.2},
        "delivery": {"retry_base_seconds": 0.5, "retry_max_seconds": 2, "interval_seconds": 0.2},
        # Orthanc sends the study in one go; 2 s of quiet keeps a busy CI machine's pause in the
        # middle of it from completing a first, partial version of the series.
        "completion": {"series_stable_seconds": 2, "study_stable_seconds": 3, "sweep_interval_seconds": 0.2},
    }
    data = config_dict(tmp_path, **{**sections, **overrides})
    return parse_config(data, "e2e-config")


def result_series(rest: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """Modality -> Orthanc instance ids, for the SEG and SR series of the study."""
    found: dict[str, list[str]] = {}
    for series in rest.series_of_study(study_uid):
        modality = series["MainDicomTags"].get("Modality")
        if modality in ("SEG", "SR"):
            found.setdefault(modality, []).extend(series["Instances"])
    return found


@pytest.fixture
def orthanc_and_node(tmp_path: Path) -> Iterator[tuple[Orthanc, Node]]:
    orthanc_port = free_port()
    node = Node(node_config(tmp_path, orthanc_port))
    node.start()
    orthanc = start_orthanc(tmp_path / "orthanc", port=orthanc_port,
                            modalities={"ainode": ["AI_NODE", "127.0.0.1", node.port]})
    try:
        yield orthanc, node
    finally:
        node.stop()
        orthanc.stop()


def test_orthanc_sends_a_study_and_gets_seg_and_sr_back(orthanc_and_node: tuple[Orthanc, Node],
                                                       phantom: Phantom, phantom_files: list[Path], tmp_path: Path) -> None:
    rest, node = orthanc_and_node
    for path in phantom_files:
        rest.upload(path)
    study_uid = str(pydicom.dcmread(phantom_files[0], stop_before_pixels=True).StudyInstanceUID)
    study_id = rest.call("POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})[0]
    answer = rest.call("POST", "/modalities/ainode/store", {"Resources": [study_id], "Synchronous": True})
    assert answer["FailedInstancesCount"] == 0, answer

    found = wait_for(lambda: (r := result_series(rest, study_uid)) and "SEG" in r and "SR" in r and r, 120,
                     "the SEG and the SR in Orthanc")
    assert len(found["SEG"]) == 1 and len(found["SR"]) == 1

    seg = hd.seg.segread(io.BytesIO(rest.instance_file(found["SEG"][0])))
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): k
               for k, p in enumerate(sorted(phantom_files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])))}
    assert str(seg.SeriesDescription).startswith("AI segmentation (ct-classical-baseline v")
    assert str(seg.StudyInstanceUID) == study_uid

    # Segments against the phantom's ground truth: lungs (phantom label 1) are the baseline's "lungs".
    lung_number = next(d.SegmentNumber for d in seg.SegmentSequence if d.SegmentLabel == "lungs")
    source_uids = list(sources)
    mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, segment_numbers=[lung_number],
                                             combine_segments=True).astype(bool)
    truth = phantom.labels == 1
    ordered = np.zeros_like(truth)
    for index, uid in enumerate(source_uids):
        ordered[sources[uid]] = mask[index]
    assert dice(ordered, truth) > 0.9

    sr = hd.sr.srread(io.BytesIO(rest.instance_file(found["SR"][0])))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    volumes = {str(g.tracking_identifier): g.get_measurements(name=pydicom.sr.codedict.codes.SCT.Volume)[0].value for g in groups}
    truth_ml = float(truth.sum()) * float(np.prod(phantom.volume.spacing)) / 1000
    assert volumes["lungs"] == pytest.approx(truth_ml, rel=0.1)

    jobs = JobQueue(node.index).list()
    assert [j["state"] for j in jobs] == ["done"]


def test_results_wait_while_the_pacs_is_down_and_arrive_once_it_is_up(tmp_path: Path, phantom_files: list[Path]) -> None:
    orthanc_port = free_port()
    node = Node(node_config(tmp_path, orthanc_port))
    node.start()
    try:
        from dicom_node.net.scu import send_files

        scu_peer = parse_config({"peers": [{"name": "n", "ae_title": "AI_NODE", "host": "127.0.0.1", "port": node.port}]}).peer("n")
        # The study comes from "ORTHANC" (a known peer) while Orthanc itself is not running.
        report = send_files("ORTHANC", scu_peer, phantom_files)
        assert report.sent == len(phantom_files)
        outbox = node.downstream.outbox if node.downstream else None
        assert outbox is not None
        wait_for(lambda: any(d["attempts"] >= 2 for d in outbox.list()), 90, "failed delivery attempts")
        assert all(d["state"] == "pending" for d in outbox.list())
        assert all("cannot reach pacs" in d["last_error"] for d in outbox.list() if d["attempts"])

        orthanc = start_orthanc(tmp_path / "orthanc", port=orthanc_port)
        try:
            rest = orthanc
            study_uid = str(pydicom.dcmread(phantom_files[0], stop_before_pixels=True).StudyInstanceUID)
            found = wait_for(lambda: (r := result_series(rest, study_uid)) and "SEG" in r and "SR" in r and r, 60,
                             "the results after Orthanc came up")
            assert len(found["SEG"]) == 1 and len(found["SR"]) == 1
            assert {d["state"] for d in outbox.list()} == {"delivered"}
        finally:
            orthanc.stop()
    finally:
        node.stop()


def test_every_result_passes_dciodvfy(orthanc_and_node: tuple[Orthanc, Node], phantom_files: list[Path],
                                      tmp_path: Path) -> None:
    rest, node = orthanc_and_node
    for path in phantom_files:
        rest.upload(path)
    study_uid = str(pydicom.dcmread(phantom_files[0], stop_before_pixels=True).StudyInstanceUID)
    study_id = rest.call("POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})[0]
    rest.call("POST", "/modalities/ainode/store", {"Resources": [study_id], "Synchronous": True})
    found = wait_for(lambda: (r := result_series(rest, study_uid)) and "SEG" in r and "SR" in r and r, 120, "results")
    for modality in ("SEG", "SR"):
        path = tmp_path / f"{modality}.dcm"
        path.write_bytes(rest.instance_file(found[modality][0]))
        result = processes.run(["dciodvfy", str(path)], timeout=120)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{modality}: {errors}"


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes_exactly_once(tmp_path: Path) -> None:
    """SIGKILL the analysis worker while it runs the model; the node starts another, which
    claims the job once the lease expires; Orthanc ends with one SEG and one SR."""
    import os
    import signal

    phantom = make_phantom(21, shape=(80, 192, 192), spacing=(2.0, 1.5, 1.5), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path / "series", seed=21)
    orthanc_port = free_port()
    config = node_config(tmp_path, orthanc_port, pipelines={"baseline": {"kind": "model", "model": "ct-organs", "device": "cpu"}},
                         jobs={"workers": 1, "lease_seconds": 3, "poll_seconds": 0.2})
    node = Node(config)
    node.start()
    orthanc = start_orthanc(tmp_path / "orthanc", port=orthanc_port, modalities={"ainode": ["AI_NODE", "127.0.0.1", node.port]})
    try:
        rest = orthanc
        for path in files:
            rest.upload(path)
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        study_id = rest.call("POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})[0]
        rest.call("POST", "/modalities/ainode/store", {"Resources": [study_id], "Synchronous": True})
        queue = JobQueue(node.index)
        wait_for(lambda: [j for j in queue.list() if j["state"] == "running"], 60, "the job to start")
        assert node.downstream is not None
        victim = node.downstream.workers[0].pid
        time.sleep(1.0)  # into the model
        os.kill(victim, signal.SIGKILL)
        assert queue.list()[0]["state"] == "running", "the job finished before the worker could be killed"

        found = wait_for(lambda: (r := result_series(rest, study_uid)) and "SEG" in r and "SR" in r and r, 180,
                         "the results after the worker was killed")
        job = queue.list()[0]
        assert job["state"] == "done" and job["attempts"] == 2
        assert node.downstream.workers[0].pid != victim
        time.sleep(2 * config.delivery.interval_seconds)  # nothing else is on its way
        found = result_series(rest, study_uid)
        assert len(found["SEG"]) == 1 and len(found["SR"]) == 1
    finally:
        node.stop()
        orthanc.stop()


def test_the_shipped_config_returns_ct_organs_results_to_the_sending_pacs(tmp_path: Path, phantom_files: list[Path]) -> None:
    """config/node.yaml as shipped (paths, ports and timings moved into the test's folder):
    `dicom-node serve` with two listener processes, the CT route, the ct-organs model and
    return to sender."""
    import yaml

    from ..support.peers import start_node

    shipped = yaml.safe_load(Path("config/node.yaml").read_text())
    orthanc_port = free_port()
    for peer in shipped["peers"]:
        if peer["name"] == "pacs":
            peer["port"] = orthanc_port
    shipped["node"].update(workers=2)
    shipped["storage"].update(path=str(tmp_path / "storage"), min_free_mb=0)
    shipped["index"]["path"] = str(tmp_path / "index.sqlite")
    shipped["audit"]["path"] = str(tmp_path / "audit.jsonl")
    shipped["results"]["path"] = str(tmp_path / "results")
    shipped["completion"] = {"series_stable_seconds": 2, "study_stable_seconds": 3, "sweep_interval_seconds": 0.2}
    node = start_node(tmp_path / "node", shipped)
    orthanc = start_orthanc(tmp_path / "orthanc", ae_title=next(p["ae_title"] for p in shipped["peers"] if p["name"] == "pacs"),
                            port=orthanc_port, modalities={"ainode": [shipped["node"]["ae_title"], "127.0.0.1", node.port]})
    try:
        for path in phantom_files:
            orthanc.upload(path)
        study_uid = str(pydicom.dcmread(phantom_files[0], stop_before_pixels=True).StudyInstanceUID)
        orthanc.call("POST", "/modalities/ainode/store", {"Resources": [orthanc.study_id(study_uid)], "Synchronous": True})
        found = wait_for(lambda: (r := result_series(orthanc, study_uid)) and "SEG" in r and "SR" in r and r, 180,
                         "ct-organs results in Orthanc")
        seg = hd.seg.segread(io.BytesIO(orthanc.instance_file(found["SEG"][0])))
        assert str(seg.SeriesDescription) == "AI segmentation (ct-organs v2.0.0)"
        assert "lungs" in {d.SegmentLabel for d in seg.SegmentSequence}
        jobs = processes.run([sys.executable, "-m", "dicom_node.cli", "--config", str(node.extra["config"]), "jobs", "--json"],
                              timeout=60)
        listed = json.loads(jobs.stdout)
        assert [(j["route"], j["pipeline"], j["ran_pipeline"], j["state"]) for j in listed["jobs"]] == [
            ("ct-default", "ct-organs,ct-baseline", "ct-organs", "done")]  # a phantom: ct-organs' own domain
        assert {(d["object"], d["peer"], d["state"]) for d in listed["deliveries"]} == {("seg", "pacs", "delivered"),
                                                                                       ("sr", "pacs", "delivered")}
    finally:
        node.stop()
        orthanc.stop()
