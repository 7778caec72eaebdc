"""MONAI bundles: a bundle folder laid out as the model zoo's (built by
scripts/build_monai_bundle.py into the git-ignored .cache, weights trained briefly on phantoms)
runs from its own configuration; the node's label map equals MONAI's own workflow on the same
image; labels from channel_def with the pipeline's codes; what is missing is named."""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from threading import Event

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread

from ai.adapters.monai_bundle import BundleError, MonaiBundlePipeline, bundle_labels
from ai.phantom import SPLEEN, make_phantom
from ai.trust.domain import Domain
from ai.types import GENERIC_CODE
from dicom_node.config import NodeConfig
from dicom_node.flow.outbox import Outbox
from dicom_node.flow.routing import route_completed
from dicom_node.flow.worker import Worker
from dicom_node.pipelines.build import describe, pipeline_problems
from dicom_node.storage.volume import SeriesVolume, load_series
from dicom_node.tools.synthetic import write_volume_series

from ...flow.test_worker import PEERS, index_series

CT = Domain(modality=["CT"], body_width_mm=(100, 700))
SPLEEN_CODES = {"spleen": (("123037004", "SCT", "Anatomical Structure"), ("78961009", "SCT", "Spleen"))}


@pytest.fixture(scope="module")
def bundle() -> Path:
    from scripts.build_monai_bundle import build

    return build()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], SeriesVolume, np.ndarray]:
    phantom = make_phantom(9201, shape=(60, 128, 128), spacing=(2.5, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path_factory.mktemp("series"), seed=9201)
    return files, load_series(files), phantom.labels == SPLEEN


@pytest.mark.slow
def test_the_node_gives_what_monais_own_workflow_gives(bundle: Path, source: tuple, tmp_path: Path) -> None:
    from monai.bundle import run as monai_run

    _, series, truth = source
    findings = MonaiBundlePipeline(bundle, CT, SPLEEN_CODES, device="cpu").run(series.volume)
    # MONAI's workflow, unchanged, on a NIfTI of the same voxels (what LoadImaged would read).
    images = tmp_path / "data" / "imagesTs"
    images.mkdir(parents=True)
    voxels = np.ascontiguousarray(series.volume.voxels.transpose(2, 1, 0)).astype(np.float32)
    nib.save(nib.Nifti1Image(voxels, series.volume.ras_affine()), images / "case.nii.gz")
    with warnings.catch_warnings():  # MONAI's notices (a bundle's config is code; deprecations)
        warnings.simplefilter("ignore")
        monai_run(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
                  bundle_root=str(bundle), dataset_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "out"))
    [saved] = list((tmp_path / "out").rglob("*.nii.gz"))
    reference = np.asarray(nib.load(str(saved)).dataobj).squeeze().transpose(2, 1, 0).astype(np.uint8)
    assert reference.shape == findings.label_map.shape
    assert np.array_equal(reference, findings.label_map)
    predicted = findings.label_map == 1
    dice = 2 * (truth & predicted).sum() / (truth.sum() + predicted.sum())
    print(f"\nbundle on held-out phantom 9201: spleen Dice {dice:.3f}; label map equal to MONAI's workflow")
    assert dice > 0.6  # a few minutes of training on phantoms: enough to say it found the spleen
    assert (findings.model_name, findings.model_version) == ("phantom_spleen_ct_segmentation", "0.1.0")
    assert findings.labels[0].type == ("78961009", "SCT", "Spleen")


def test_labels_come_from_channel_def_with_codes_or_a_generic_one() -> None:
    metadata = {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "2": "kidney", "1": "spleen"}}}}}
    labels = bundle_labels(metadata, SPLEEN_CODES)
    assert [(label.value, label.name) for label in labels] == [(1, "spleen"), (2, "kidney")]
    assert labels[0].type == ("78961009", "SCT", "Spleen")
    assert labels[1].type == GENERIC_CODE and labels[1].category == GENERIC_CODE
    with pytest.raises(BundleError, match="channel_def is missing"):
        bundle_labels({}, {})


def test_a_bundle_without_its_parts_is_named(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="configs/metadata.json: missing"):
        MonaiBundlePipeline(tmp_path, CT)
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    (copy / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match="no model.pt or model.ts"):
        MonaiBundlePipeline(copy, CT).weights()


def test_start_up_names_a_missing_monai_and_a_bundle_without_weights(make_config: Callable[..., NodeConfig], bundle: Path,
                                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    shutil.copytree(bundle / "configs", empty / "configs")
    config = make_config(pipelines={
        "spleen": {"kind": "monai-bundle", "path": str(bundle), "domain": {"modality": ["CT"]}},
        "no-weights": {"kind": "monai-bundle", "path": str(empty), "domain": {"modality": ["CT"]}},
    })
    problems = pipeline_problems(config)
    assert len(problems) == 1 and "pipelines.no-weights" in problems[0] and "no model.pt or model.ts" in problems[0]
    row = describe("spleen", config.pipelines["spleen"])
    assert (row["kind"], row["model"], row["labels"], row["source"]) == ("monai-bundle", "phantom_spleen_ct_segmentation",
                                                                         ["spleen"], str(bundle))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "monai" else real(name, *a))
    assert all("pip install 'dicom-node[monai]'" in p for p in pipeline_problems(config))


@pytest.mark.slow
def test_a_bundle_job_becomes_seg_and_sr(make_config: Callable[..., NodeConfig], bundle: Path, source: tuple,
                                         tmp_path: Path) -> None:
    files, _, _ = source
    config = make_config(
        peers=PEERS,
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "spleen", "destinations": ["sender"]}],
        pipelines={"spleen": {"kind": "monai-bundle", "path": str(bundle), "device": "cpu",
                              "domain": {"modality": ["CT"], "body_width_mm": [100, 700]},
                              "codes": {"spleen": {"category": ["123037004", "SCT", "Anatomical Structure"],
                                                   "type": ["78961009", "SCT", "Spleen"]}}}},
        results={"path": str(tmp_path / "results")},
    )
    worker = Worker(config)
    index_series(worker.index, files)
    route_completed(worker.index, config, now=1000)
    assert worker.run(Event(), burst=True) == 1
    rows = {d["object"]: json.loads(d["candidates"]) for d in Outbox(worker.index).list()}
    worker.close()
    seg = dcmread(rows["seg"][0]["path"])
    assert str(seg.SeriesDescription) == "AI segmentation (phantom_spleen_ct_segmentation v0.1.0)"
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "spleen" and segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "phantom_spleen_ct_segmentation"


def test_the_bundles_metadata_names_the_modality_when_the_configuration_does_not(make_config: Callable[..., NodeConfig],
                                                                                 bundle: Path, tmp_path: Path) -> None:
    from dicom_node.errors import PipelineError
    from dicom_node.pipelines.build import build_pipeline

    config = make_config(pipelines={"spleen": {"kind": "monai-bundle", "path": str(bundle)},
                                    "spleen-abdomen": {"kind": "monai-bundle", "path": str(bundle),
                                                       "domain": {"body_regions": ["ABDOMEN"]}}})
    assert build_pipeline(config.pipelines["spleen"], name="spleen").domain.modality == ["CT"]
    assert build_pipeline(config.pipelines["spleen-abdomen"], name="spleen-abdomen").domain.modality == ["CT"]
    unnamed = tmp_path / "unnamed"
    shutil.copytree(bundle, unnamed)
    metadata = json.loads((unnamed / "configs" / "metadata.json").read_text())
    del metadata["network_data_format"]["inputs"]["image"]["modality"]
    (unnamed / "configs" / "metadata.json").write_text(json.dumps(metadata))
    bare = make_config(pipelines={"x": {"kind": "monai-bundle", "path": str(unnamed)}})
    with pytest.raises(PipelineError, match="give domain.modality"):
        build_pipeline(bare.pipelines["x"], name="x")
