"""Real patient scans (../shared/data/real-scans/): what the node may claim about them.

Pipeline level: each pipeline's gate decision on each scan and, where it runs, the Dice of what
it reports against TotalSegmentator's reference labels. End to end: the shipped configuration,
the scans written as DICOM series and sent by DCMTK storescu, the SEG read back and scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from ai.pipeline import ClassicalCTPipeline, SegmentationPipeline
from ai.registry import ModelRegistry
from ai.trust.gate import GateFacts, check

from ..conftest import Dcmtk
from ..support import processes, real_scans
from ..support.peers import start_node, wait_for

pytestmark = pytest.mark.skipif(not real_scans.available(), reason="../shared/data/real-scans/ is not here")

CT_FACTS = GateFacts(modality="CT", body_part_examined="ABDOMEN", slice_thickness_mm=3.0)


@pytest.fixture(scope="module")
def organs() -> SegmentationPipeline:
    return SegmentationPipeline(ModelRegistry().get("ct-organs"), device="cpu")


@pytest.mark.parametrize("scan", ["ct_abdomen_3mm.nii.gz", "ct_torso_3mm.nii.gz"])
def test_ct_organs_declines_real_ct(organs: SegmentationPipeline, scan: str) -> None:
    """Trained on phantoms only: a patient's scan lies far outside its training statistics."""
    decision = check(organs.domain, CT_FACTS, real_scans.nifti_volume(scan))
    assert not decision.applicable
    assert any("unlike the training data (synthetic 40)" in reason for reason in decision.reasons)
    assert decision.measures["distance"] > 4 * organs.domain.intensity.max_distance  # type: ignore[union-attr]


def test_classical_baseline_claims_hold_on_the_real_abdomen() -> None:
    volume = real_scans.nifti_volume("ct_abdomen_3mm.nii.gz")
    pipeline = ClassicalCTPipeline()
    assert check(pipeline.domain, CT_FACTS, volume).applicable
    findings = pipeline.run(volume)
    reference = real_scans.reference_labels()
    scores = {}
    for info in findings.labels:
        group = real_scans.REFERENCE_GROUPS.get(info.name)
        if group is not None and (findings.label_map == info.value).any():
            scores[info.name] = real_scans.dice(findings.label_map == info.value, np.isin(reference, group))
    assert scores["lungs"] >= 0.9  # measured 0.97
    assert scores["bone"] >= 0.75  # measured 0.84
    assert not [m for m in findings.measurements if m.lesion_index is not None], "a nodule claimed on real CT"
    assert findings.findings == {}


def test_classical_baseline_claims_no_nodule_on_the_real_torso() -> None:
    findings = ClassicalCTPipeline().run(real_scans.nifti_volume("ct_torso_3mm.nii.gz"))
    assert not [m for m in findings.measurements if m.lesion_index is not None]
    lungs = next(m for m in findings.measurements if m.name == "lungs")
    assert 60 < lungs.volume_ml < 200  # the lung bases this scan holds (the abdomen crop's 116 mL), no bowel gas


@pytest.mark.parametrize("pipeline", ["ct-organs", "ct-baseline"])
def test_no_ct_pipeline_takes_the_mr_scan(organs: SegmentationPipeline, pipeline: str) -> None:
    domain = organs.domain if pipeline == "ct-organs" else ClassicalCTPipeline.domain
    volume = real_scans.nifti_volume("mr_abdomen_3mm.nii.gz", "MR")
    honest = check(domain, GateFacts(modality="MR", body_part_examined="ABDOMEN"), volume)
    assert not honest.applicable and "Modality MR is not CT" in honest.reasons[0]
    mislabelled = check(domain, CT_FACTS, volume)  # an MR that says it is CT: its pixels say otherwise
    assert not mislabelled.applicable
    assert any("not Hounsfield units" in reason for reason in mislabelled.reasons)


def _shipped_config(workdir: Path) -> Path:
    """config/node.yaml as shipped; only where it listens changes (port from the environment)."""
    path = workdir / "node.yaml"
    path.write_text((Path(__file__).parents[2] / "config" / "node.yaml").read_text())
    return path


def test_real_scans_through_the_node_with_the_shipped_configuration(tmp_path: Path, dcmtk: Dcmtk) -> None:
    """The shipped route tries ct-organs, then the classical baseline: on the real abdomen
    ct-organs declines, the baseline's lungs and bone reach Dice >= 0.7 / 0.6, no lesion is
    claimed; the MR series is stored and not analysed, and the node says why."""
    series = {
        "abdomen": real_scans.write_as_dicom("ct_abdomen_3mm.nii.gz", tmp_path / "abdomen", seed=1),
        "mr": real_scans.write_as_dicom("mr_abdomen_3mm.nii.gz", tmp_path / "mr", modality="MR", seed=3),
    }
    config = yaml.safe_load(_shipped_config(tmp_path).read_text())
    # Where it keeps files and how long it waits change; routes, pipelines and peers are as shipped.
    var = tmp_path / "node" / "var"
    config["storage"]["path"], config["index"]["path"] = str(var / "storage"), str(var / "index.sqlite")
    config["audit"]["path"], config["results"]["path"] = str(var / "audit.jsonl"), str(var / "results")
    config["completion"] = {**config["completion"], "series_stable_seconds": 2, "study_stable_seconds": 4}
    node = start_node(tmp_path / "node", config)
    try:
        for folder in series.values():
            sent = processes.run([dcmtk.storescu, "-aet", "STORESCU", "-aec", "AI_NODE", "127.0.0.1", str(node.port),
                                   *map(str, folder)], env=dcmtk.env(), timeout=120)
            assert sent.returncode == 0, sent.stderr
        index_path = tmp_path / "node" / "var" / "index.sqlite"

        def finished() -> list[dict[str, object]] | None:
            from dicom_node.flow.jobs import JobQueue
            from dicom_node.storage.index import Index

            index = Index(index_path, synchronous="NORMAL")
            try:
                jobs = JobQueue(index).list()
            finally:
                index.close()
            return jobs if jobs and all(job["state"] in ("done", "dead", "not applicable") for job in jobs) else None

        jobs = wait_for(finished, 240, "the abdomen job to finish")
        corrections = _send_reference_as_correction(tmp_path, node.port, series["abdomen"], dcmtk, index_path)
    finally:
        node.stop()
    # The reference labels came back as a radiologist's corrected SEG: recorded as the baseline's
    # real-world performance (the body segment, which the reference lacks, counts as deleted).
    [correction] = corrections
    dices = {s["name"]: s["dice"] for s in correction["segments"]}
    assert correction["model"] == "ct-classical-baseline" and dices["body"] == 0.0
    assert dices["lungs"] >= 0.9 and dices["bone"] >= 0.75, dices  # as scored below: 0.97, 0.84
    assert len(jobs) == 1, jobs  # the MR matched no route: no job at all
    [job] = jobs
    assert (job["state"], job["ran_pipeline"]) == ("done", "ct-baseline"), job["last_error"]
    log = (tmp_path / "node" / "node.log").read_text()
    assert "ct-organs declined the series" in log and "ct-baseline takes it" in log
    assert "matched none of the rules, stored, not analysed (ct-default: Modality is 'MR'" in log
    results = list((tmp_path / "node" / "var" / "results").glob("*/seg-binary.dcm"))
    assert len(results) == 1
    masks = real_scans.seg_masks(results[0], series["abdomen"])
    reference = real_scans.reference_labels()
    assert set(masks) <= {"body", "lungs", "bone"}, f"claimed: {sorted(masks)}"
    for name, mask in masks.items():
        group = real_scans.REFERENCE_GROUPS.get(name)
        if group is not None:  # the reference covers it
            assert real_scans.dice(mask, np.isin(reference, group)) >= (0.6 if name == "bone" else 0.7), name
    assert "lungs" in masks and "bone" in masks


def _send_reference_as_correction(tmp_path: Path, port: int, files: list[Path], dcmtk: Dcmtk,
                                  index_path: Path) -> list[dict[str, object]]:
    """TotalSegmentator's lungs and bones as a SEG on the node's source series, sent back by
    storescu as an edited result would be; the corrections the node records (its monitor looks
    every 15 s)."""
    from ai.pipeline import BASELINE_LABELS
    from ai.types import Findings
    from dicom_node.monitoring.corrections import recent_corrections
    from dicom_node.results import ResultSettings, build_segmentation
    from dicom_node.storage.index import Index
    from dicom_node.storage.volume import load_series

    reference = real_scans.reference_labels()
    labels = np.zeros(reference.shape, dtype=np.uint8)
    labels[np.isin(reference, real_scans.REFERENCE_GROUPS["lungs"])] = 2
    labels[np.isin(reference, real_scans.REFERENCE_GROUPS["bone"])] = 3
    seg = build_segmentation(load_series(files), Findings(labels, BASELINE_LABELS, (), {}, {}, "radiologist", "1"),
                             "radiologist-edit", ResultSettings())
    path = tmp_path / "corrected-seg.dcm"
    seg.save_as(path)
    sent = processes.run([dcmtk.storescu, "-R", "-aet", "STORESCU", "-aec", "AI_NODE", "127.0.0.1", str(port), str(path)],
                         env=dcmtk.env(), timeout=120)
    assert sent.returncode == 0, sent.stderr

    def recorded() -> list[dict[str, object]] | None:
        index = Index(index_path, synchronous="NORMAL")
        try:
            return recent_corrections(index) or None
        finally:
            index.close()

    return wait_for(recorded, 60, "the correction to be recorded")


@pytest.mark.parametrize(("change", "what"), [
    ({"LUNG_MAX_PURE_AIR": 1.0, "LUNG_MEDIAN_HU": (-1100.0, -600.0)}, "lungs"),  # bowel gas comes back
    ({"LUNG_MEDIAN_HU": (-950.0, -850.0)}, "lungs"),  # real lung bases (-780..-800) drop out
    ({"LUNG_MIN_ML": 500.0}, "lungs"),
    ({"BONE_HU": 250.0}, "bone"),  # cortex only again
    ({"BONE_CLOSING": 1, "BONE_HU": 200.0}, "bone"),
    ({"BONE_CORTEX_VOXELS": 10**6}, "bone"),
])
def test_each_baseline_threshold_moves_its_real_dice(change: dict[str, object], what: str) -> None:
    volume = real_scans.nifti_volume("ct_abdomen_3mm.nii.gz")
    reference = np.isin(real_scans.reference_labels(), real_scans.REFERENCE_GROUPS[what])
    value = {"lungs": 2, "bone": 3}[what]
    moved = type("Moved", (ClassicalCTPipeline,), change)()
    assert real_scans.dice(ClassicalCTPipeline().run(volume).label_map == value, reference) >= 0.8
    assert real_scans.dice(moved.run(volume).label_map == value, reference) < 0.7


@pytest.mark.parametrize("change", [{"NODULE_MIN_PEAK_HU": -1000.0}])
def test_the_nodule_core_threshold_moves_the_real_claims(change: dict[str, object]) -> None:
    moved = type("Moved", (ClassicalCTPipeline,), change)()
    findings = moved.run(real_scans.nifti_volume("ct_abdomen_3mm.nii.gz"))
    assert [m for m in findings.measurements if m.lesion_index is not None], "partial-volume lung is a 'nodule' again"


def test_past_the_gate_ct_organs_would_still_withhold_every_structure(organs: SegmentationPipeline) -> None:
    """Defence in depth: run ungated on the real abdomen, each structure's confidence falls under
    the card's calibrated threshold and nothing, no lesion either, would be reported."""
    findings = organs.run(real_scans.nifti_volume("ct_abdomen_3mm.nii.gz"))
    withheld = findings.extra["withheld"]
    assert {"lungs", "liver", "spleen", "kidneys", "bone"} <= set(withheld), withheld
    assert all("confidence" in why for name, why in withheld.items() if name in ("lungs", "liver", "spleen", "kidneys", "bone"))
    assert findings.findings == {}  # neither present nor absent: the hosts are withheld
    assert not [m for m in findings.measurements if m.voxel_count]
    assert not findings.label_map.any()
