"""nnU-Net v2 model folders: a small model trained by nnU-Net's own tools on phantoms
(scripts/build_nnunet_model.py, into the git-ignored .cache) gives, through the node, what
nnUNetv2_predict_from_modelfolder gives on the same image; the RAS+ path is nibabel's closest
canonical and comes back exactly; labels from dataset.json; what is missing is named."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from threading import Event

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread

from ai.adapters.nnunet import NnUNetModelError, NnUNetPipeline, dataset_labels, from_ras, to_ras
from ai.phantom import LIVER, make_phantom
from ai.trust.domain import Domain
from ai.types import GENERIC_CODE, Volume
from dicom_node.config import NodeConfig
from dicom_node.flow.outbox import Outbox
from dicom_node.flow.routing import route_completed
from dicom_node.flow.worker import Worker
from dicom_node.pipelines.build import describe, pipeline_problems
from dicom_node.storage.volume import load_series
from dicom_node.tools.synthetic import write_volume_series

from ...flow.test_worker import PEERS, index_series
from ...support import processes

CT = Domain(modality=["CT"], body_width_mm=(100, 700))
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def model() -> Path:
    """Built once by nnU-Net's own commands (a child process: nnU-Net reads its folders from the
    environment at import)."""
    result = processes.run([sys.executable, "scripts/build_nnunet_model.py"], timeout=900,
                            cwd=Path(__file__).parents[3])
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], object, np.ndarray]:
    phantom = make_phantom(9301, shape=(40, 96, 96), spacing=(3.0, 2.5, 2.5), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path_factory.mktemp("series"), seed=9301)
    return files, load_series(files), phantom.labels == LIVER


@pytest.mark.slow
def test_the_node_gives_what_nnunetv2_predict_gives(model: Path, series: tuple, tmp_path: Path) -> None:
    _, source, truth = series
    pipeline = NnUNetPipeline(model, CT, device="cpu", mirroring=False)
    findings = pipeline.run(source.volume)
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    voxels = np.ascontiguousarray(source.volume.voxels.transpose(2, 1, 0)).astype(np.float32)
    nib.save(nib.Nifti1Image(voxels, source.volume.ras_affine()), inputs / "case_0000.nii.gz")
    result = processes.run([str(BIN / "nnUNetv2_predict_from_modelfolder"), "-i", str(inputs), "-o", str(outputs),
                             "-m", str(model), "-f", "0", "-chk", "checkpoint_final.pth", "-device", "cpu", "--disable_tta",
                             "-npp", "1", "-nps", "1"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = np.asarray(nib.load(str(outputs / "case.nii.gz")).dataobj).transpose(2, 1, 0).astype(np.uint8)
    assert np.array_equal(reference, findings.label_map)
    assert (findings.label_map > 0).mean() > 0.01  # the equality is not that of two empty maps
    liver = findings.label_map == 1
    dice = 2 * (liver & truth).sum() / max(1, liver.sum() + truth.sum())
    record = json.loads((model / "training.json").read_text())
    print(f"\nnnU-Net ({record['iterations_per_epoch']} iterations on {record['cases']} phantoms) on held-out phantom "
          f"9301: liver Dice {dice:.3f}; label map equal to nnUNetv2_predict_from_modelfolder's")
    assert [label.name for label in findings.labels] == ["liver", "spleen"]
    assert findings.model_name == "Dataset900_Phantom"


def test_ras_orientation_is_nibabels_closest_canonical_and_comes_back() -> None:
    rng = np.random.default_rng(0)
    direction = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # a coronal series: rows along S
    volume = Volume(rng.normal(size=(5, 7, 9)).astype(np.float32), (3.0, 2.0, 1.5), (10.0, 20.0, 30.0), direction)
    image, spacing, transform = to_ras(volume)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(volume.voxels.transpose(2, 1, 0), volume.ras_affine()))
    assert np.array_equal(image, np.asarray(canonical.dataobj).transpose(2, 1, 0))
    assert spacing == tuple(float(s) for s in canonical.header.get_zooms()[::-1])
    labels = (image > 0).astype(np.uint8)
    assert np.array_equal(from_ras(labels, transform), (volume.voxels > 0).astype(np.uint8))


def test_labels_from_dataset_json() -> None:
    codes = {"liver": (("123037004", "SCT", "Anatomical Structure"), ("10200004", "SCT", "Liver"))}
    labels = dataset_labels({"labels": {"background": 0, "spleen": 2, "liver": 1}}, codes)
    assert [(label.value, label.name) for label in labels] == [(1, "liver"), (2, "spleen")]
    assert labels[0].type == ("10200004", "SCT", "Liver") and labels[1].type == GENERIC_CODE
    with pytest.raises(NnUNetModelError, match="region-based models are not supported"):
        dataset_labels({"labels": {"background": 0, "whole": [1, 2]}}, {})


def test_a_folder_without_its_parts_is_named(model: Path, tmp_path: Path, make_config: Callable[..., NodeConfig],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NnUNetModelError, match="dataset.json: missing"):
        NnUNetPipeline(tmp_path, CT)
    with pytest.raises(NnUNetModelError, match="fold_3/checkpoint_final.pth: missing"):
        NnUNetPipeline(model, CT, folds=(3,))
    config = make_config(pipelines={"ok": {"kind": "nnunet", "path": str(model), "domain": {"modality": ["CT"]}},
                                    "fold-3": {"kind": "nnunet", "path": str(model), "folds": [3], "domain": {"modality": ["CT"]}}})
    problems = pipeline_problems(config)
    assert len(problems) == 1 and "pipelines.fold-3" in problems[0]
    row = describe("ok", config.pipelines["ok"])
    assert (row["kind"], row["model"], row["labels"]) == ("nnunet", "Dataset900_Phantom", ["liver", "spleen"])
    assert "error" in describe("fold-3", config.pipelines["fold-3"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nnunetv2" else real(name, *a))
    assert all("pip install 'dicom-node[nnunet]'" in p for p in pipeline_problems(config))


@pytest.mark.slow
def test_an_nnunet_job_becomes_seg_and_sr(make_config: Callable[..., NodeConfig], model: Path, series: tuple,
                                          tmp_path: Path) -> None:
    files, _, _ = series
    config = make_config(
        peers=PEERS,
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "organs", "destinations": ["sender"]}],
        pipelines={"organs": {"kind": "nnunet", "path": str(model), "device": "cpu", "mirroring": False,
                              "name": "phantom-nnunet", "version": "0.1",
                              "domain": {"modality": ["CT"], "body_width_mm": [100, 700]}}},
        results={"path": str(tmp_path / "results")},
    )
    worker = Worker(config)
    index_series(worker.index, files)
    route_completed(worker.index, config, now=1000)
    assert worker.run(Event(), burst=True) == 1
    rows = {d["object"]: json.loads(d["candidates"]) for d in Outbox(worker.index).list()}
    worker.close()
    assert set(rows) == {"seg", "sr"}
    seg = dcmread(rows["seg"][0]["path"])
    assert str(seg.SeriesDescription) == "AI segmentation (phantom-nnunet v0.1)"
