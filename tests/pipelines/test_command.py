"""Pipelines of kind command, with small modules that follow mercure's contract
(tests/support/modules/): a NIfTI label map becomes our SEG and SR, a module's SEG is checked and sent
as it is, a failing or hanging module fails the job with its stderr or the timeout, garbage
fails it for good; work folders never stay behind."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from threading import Event

import numpy as np
import pytest
from pydicom import dcmread

from ai.phantom import make_phantom
from dicom_node.config import NodeConfig, PipelineSpec
from dicom_node.errors import CommandFailed, CommandOutputError
from dicom_node.flow.outbox import Outbox
from dicom_node.flow.routing import route_completed
from dicom_node.flow.worker import Worker
from dicom_node.pipelines.command import CommandPipeline
from dicom_node.storage.volume import SeriesVolume, load_series
from dicom_node.tools.synthetic import write_volume_series

from ..flow.test_worker import PEERS, index_series

MODULES = Path(__file__).parents[1] / "support" / "modules"
DOMAIN = {"modality": ["CT"], "body_width_mm": [100, 700]}


def spec(module: str, **extra: object) -> PipelineSpec:
    return PipelineSpec.model_validate({"kind": "command", "command": [sys.executable, str(MODULES / f"{module}.py")],
                                        "name": f"site-{module.replace('_module', '')}", "version": "1.0",
                                        "domain": DOMAIN, **extra})


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], SeriesVolume]:
    phantom = make_phantom(11, shape=(24, 64, 80), spacing=(3.0, 2.5, 2.5), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path_factory.mktemp("series"), seed=11)
    return files, load_series(files)


def test_a_nifti_label_map_comes_back_on_the_series_grid(series: tuple[list[Path], SeriesVolume], tmp_path: Path) -> None:
    files, source = series
    pipeline = CommandPipeline("nifti", spec("nifti_module", settings={"threshold": 300},
                                             codes={"bone": {"category": ["123037004", "SCT", "Anatomical Structure"],
                                                             "type": ["272673000", "SCT", "Bone structure"]}}), tmp_path / "work")
    output = pipeline.run_series(source, files, "job-1", tmp_path / "kept")
    findings = output.findings
    assert findings is not None and output.dicom == []
    hu = source.volume.voxels
    expected = np.zeros(hu.shape, dtype=np.uint8)
    expected[hu > 300] = 1
    expected[(hu < -400) & (hu > -990)] = 2
    assert np.array_equal(findings.label_map, expected)  # voxel for voxel, through the flipped RAS axes
    bone, air = findings.label(1), findings.label(2)
    assert bone.type == ("272673000", "SCT", "Bone structure")  # from the pipeline's codes
    assert air.type == ("85756007", "SCT", "Tissue") and air.name == "air in body" and air.color == (0, 200, 255)
    assert (findings.model_name, findings.model_version) == ("site-nifti", "1.0")
    assert {m.name for m in findings.measurements} == {"bone", "air in body"}
    assert list((tmp_path / "work").iterdir()) == []  # work folders removed


def test_a_module_seg_is_checked_and_passed_through(series: tuple[list[Path], SeriesVolume], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    files, source = series
    pipeline = CommandPipeline("seg", spec("seg_module"), tmp_path / "work")
    output = pipeline.run_series(source, files, "job-2", tmp_path / "kept")
    assert output.findings is None and [p.name for p in output.dicom] == ["module-0.dcm"]
    assert dcmread(output.dicom[0]).ReferencedSeriesSequence[0].SeriesInstanceUID == source.datasets[0].SeriesInstanceUID
    monkeypatch.setenv("SHIFT_SEG", "1")
    with pytest.raises(CommandOutputError, match="frame 1 at .* lies on no slice of the series"):
        pipeline.run_series(source, files, "job-2", tmp_path / "kept")
    assert list((tmp_path / "work").iterdir()) == []


def test_a_failing_module_fails_with_its_stderr(series: tuple[list[Path], SeriesVolume], tmp_path: Path) -> None:
    files, source = series
    with pytest.raises(CommandFailed) as info:
        CommandPipeline("failing", spec("failing_module"), tmp_path / "work").run_series(source, files, "job-3", tmp_path / "kept")
    assert "site-failing: exit status 1" in str(info.value)
    assert "FileNotFoundError: /models/liver.pt" in str(info.value)
    assert list((tmp_path / "work").iterdir()) == []


def test_a_hanging_module_is_killed_at_its_timeout(series: tuple[list[Path], SeriesVolume], tmp_path: Path) -> None:
    files, source = series
    started = time.monotonic()
    with pytest.raises(CommandFailed, match="timed out after 2 s"):
        CommandPipeline("hanging", spec("hanging_module", timeout_seconds=2), tmp_path / "work").run_series(source, files, "job-4", tmp_path / "kept")
    assert time.monotonic() - started < 10
    assert list((tmp_path / "work").iterdir()) == []


def test_garbage_output_is_refused(series: tuple[list[Path], SeriesVolume], tmp_path: Path) -> None:
    files, source = series
    with pytest.raises(CommandOutputError, match="wrote result.dcm, which is not a DICOM file"):
        CommandPipeline("garbage", spec("garbage_module"), tmp_path / "work").run_series(source, files, "job-5", tmp_path / "kept")
    assert list((tmp_path / "work").iterdir()) == []


def test_a_command_needs_a_domain_and_a_program() -> None:
    with pytest.raises(ValueError, match="needs a domain"):
        CommandPipeline("x", PipelineSpec(kind="command", command=["true"]))
    with pytest.raises(ValueError, match="needs a command"):
        CommandPipeline("x", PipelineSpec(kind="command", domain=DOMAIN))


@pytest.mark.parametrize("module", ["nifti_module", "seg_module", "failing_module", "garbage_module"])
def test_the_worker_turns_module_output_into_deliveries(make_config: Callable[..., NodeConfig], tmp_path: Path,
                                                         series: tuple[list[Path], SeriesVolume], module: str) -> None:
    files, _ = series
    config = make_config(
        peers=PEERS,
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "site", "destinations": ["sender"]}],
        pipelines={"site": spec(module).model_dump(mode="json", exclude_defaults=True) | {"kind": "command"}},
        results={"path": str(tmp_path / "results")},
        jobs={"retry_base_seconds": 0},
    )
    worker = Worker(config)
    index_series(worker.index, files)
    route_completed(worker.index, config, now=1000)
    worker.run(Event(), burst=True)
    [job] = worker.jobs.list()
    rows = {d["object"]: json.loads(d["candidates"]) for d in Outbox(worker.index).list()}
    worker.close()
    if module == "nifti_module":
        assert job["state"] == "done" and set(rows) == {"seg", "sr"}
        seg = dcmread(rows["seg"][0]["path"])
        assert str(seg.SeriesDescription) == "AI segmentation (site-nifti v1.0)"
    elif module == "seg_module":
        assert job["state"] == "done" and len(rows) == 1
        [(uid, [candidate])] = rows.items()
        sent = dcmread(candidate["path"])
        assert sent.SOPInstanceUID == uid and sent.Modality == "SEG" and candidate["variant"] == "original"
    elif module == "failing_module":  # retried, then dead, with the module's stderr
        assert job["state"] == "dead" and job["attempts"] == 3 and rows == {}
        assert "exit status 1" in job["last_error"] and "FileNotFoundError: /models/liver.pt" in job["last_error"]
    else:  # the same output again would not help: dead at once
        assert job["state"] == "dead" and job["attempts"] == 1 and "not a DICOM file" in job["last_error"]
    assert not (tmp_path / "results" / "work").exists() or list((tmp_path / "results" / "work").iterdir()) == []


def test_a_label_map_on_the_series_grid_in_any_axis_order_and_nothing_else(series: tuple[list[Path], SeriesVolume],
                                                                          tmp_path: Path) -> None:
    import nibabel as nib

    from dicom_node.pipelines.command import nifti_on_grid

    _, source = series
    labels = (np.arange(np.prod(source.volume.shape)) % 7).reshape(source.volume.shape).astype(np.uint8)
    affine = source.volume.ras_affine()  # for an (i, j, k) array
    swap = np.eye(4)[[2, 1, 0, 3]]  # the same voxels stored as a (k, j, i) array
    cases = {"ijk.nii": (labels.transpose(2, 1, 0), affine), "kji.nii": (labels, affine @ swap)}
    for name, (array, matrix) in cases.items():
        nib.save(nib.Nifti1Image(array, matrix), tmp_path / name)
        assert np.array_equal(nifti_on_grid(tmp_path / name, source), labels), name
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 0] * 0.5  # half a voxel along i
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), shifted), tmp_path / "shifted.nii")
    with pytest.raises(CommandOutputError, match="not on the series' voxel grid"):
        nifti_on_grid(tmp_path / "shifted.nii", source)
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0)[:, :, :-2], affine), tmp_path / "short.nii")
    with pytest.raises(CommandOutputError, match="does not cover the series"):
        nifti_on_grid(tmp_path / "short.nii", source)
