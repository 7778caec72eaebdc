"""IHE AI Results (AIR) rules, checked on every object the node writes: SEG, SR, the declined SR,
the Parametric Map and the Key Object Selection; dciodvfy stays clean on each."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from ai.measure import measure_all
from ai.phantom import Phantom, make_phantom
from ai.registry import ModelRegistry
from ai.types import UNCERTAINTY_STEPS, Findings
from dicom_node.results import ResultSettings, build_declined_report, build_report, build_segmentation
from dicom_node.results.identity import Algorithm, derive_uid
from dicom_node.results.key_images import build_key_images, key_slices
from dicom_node.results.parametric_map import build_uncertainty_map
from dicom_node.storage.volume import SeriesVolume, load_series
from dicom_node.tools.synthetic import write_volume_series

from .test_results import dciodvfy_errors

STARTED = datetime(2026, 12, 6, 9, 30, 15, 250000, tzinfo=timezone.utc)
DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(31, shape=(40, 96, 96), spacing=(2.5, 2.5, 2.5), liver_lesions=(2, 2), lung_nodules=(1, 1))


@pytest.fixture(scope="module")
def source(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> SeriesVolume:
    files = write_volume_series(phantom.volume, tmp_path_factory.mktemp("air"), seed=31)
    for path in files:  # what a RIS put in the study: the exam's procedure code
        ds = pydicom.dcmread(path)
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "RPID17", "LOCAL", "CT CHEST ABDOMEN WITH CONTRAST"
        ds.ProcedureCodeSequence = [item]
        ds.save_as(path)
    return load_series(files)


@pytest.fixture(scope="module")
def findings(phantom: Phantom, source: SeriesVolume) -> Findings:
    labels = ModelRegistry().get("ct-organs").label_infos()
    measurements = measure_all(phantom.labels, source.volume, labels, lambda label, idx: 0.9)
    uncertainty = np.full(phantom.labels.shape, UNCERTAINTY_STEPS // 10, dtype=np.uint8)
    return Findings(phantom.labels, labels, tuple(measurements), {"liver lesion present": 0.9}, {"liver lesion present": True},
                    "ct-organs", "2.0.0", extra={"analysis_started": STARTED}, uncertainty=uncertainty, weights_digest=DIGEST)


@pytest.fixture(scope="module")
def objects(source: SeriesVolume, findings: Findings) -> dict[str, Dataset]:
    settings = ResultSettings()
    seg = build_segmentation(source, findings, "air-job", settings)
    declining = [(Algorithm("ct-organs", "2.0.0", weights_digest=DIGEST), "slices 10 mm thick"),
                 (Algorithm("ct-classical-baseline", "2.1.0", "Image Processing", "cd" * 32), "Modality MR is not CT")]
    return {"seg": seg, "sr": build_report(source, findings, seg, "air-job", settings),
            "declined": build_declined_report(source, declining, "air-job", settings, STARTED),
            "map": build_uncertainty_map(source, findings, "air-job", settings),
            "kos": build_key_images(source, findings, "air-job", settings)}  # type: ignore[dict-item]


def _walk(items: list[Dataset]) -> list[Dataset]:
    out: list[Dataset] = []
    for item in items:
        out.append(item)
        out.extend(_walk(list(item.get("ContentSequence", []))))
    return out


@pytest.mark.parametrize("kind", ["seg", "sr", "declined", "map", "kos"])
def test_every_object_names_its_algorithm_as_contributing_equipment(objects: dict[str, Dataset], kind: str,
                                                                   tmp_path: Path) -> None:
    ds = objects[kind]
    assert ds is not None
    assert dciodvfy_errors(ds, tmp_path / f"{kind}.dcm") == []
    algorithms = [("ct-organs", "2.0.0", DIGEST)] + ([("ct-classical-baseline", "2.1.0", "cd" * 32)] if kind == "declined" else [])
    # One item per algorithm (highdicom adds the source's Acquisition Equipment and itself).
    ours = [item for item in ds.ContributingEquipmentSequence if item.Manufacturer == "dicom-node"
            and item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"]
    assert [item.ManufacturerModelName for item in ours] == [name for name, _, _ in algorithms]
    for item, (name, version, digest) in zip(ours, algorithms):
        purpose = item.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == ("109102", "DCM", "Processing Equipment")
        assert item.Manufacturer == "dicom-node" and item.ManufacturerModelName == name
        assert version in list(item.SoftwareVersions) and any(str(v).startswith("dicom-node ") for v in item.SoftwareVersions)
        assert item.DeviceUID == Algorithm(name, version, weights_digest=digest).device_uid
    # Content Date/Time: when the analysis began.
    assert (ds.ContentDate, ds.ContentTime[:6]) == ("20261206", "093015")


def test_the_device_uid_follows_the_weights() -> None:
    one = Algorithm("ct-organs", "2.0.0", weights_digest="ab" * 32)
    assert one.device_uid == Algorithm("other-name", "9", weights_digest="ab" * 32).device_uid
    assert one.device_uid != replace(one, weights_digest="ac" * 32).device_uid
    assert one.device_uid.startswith("2.25.") and len(one.device_uid) <= 64


def test_seg_and_sr_identify_the_algorithm_from_one_source(objects: dict[str, Dataset]) -> None:
    for segment in objects["seg"].SegmentSequence:
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0] if "SegmentationAlgorithmIdentificationSequence" in segment \
            else None
        assert (segment.SegmentAlgorithmName, segment.SegmentAlgorithmType) == ("ct-organs", "AUTOMATIC")
        if algorithm is not None:
            assert algorithm.AlgorithmVersion == "2.0.0"
    groups = [item for item in _walk(list(objects["sr"].ContentSequence)) if item.ValueType == "CONTAINER"
              and item.ConceptNameCodeSequence[0].CodeValue == "125007"]
    assert groups
    for group in groups:
        names = {(i.ConceptNameCodeSequence[0].CodeValue, str(i.get("TextValue", ""))) for i in group.ContentSequence
                 if i.ValueType == "TEXT"}
        assert ("111001", "ct-organs") in names and ("111003", "2.0.0") in names  # TID 4019
        codes_in_group = {i.ConceptNameCodeSequence[0].CodeValue for i in group.ContentSequence}
        assert {"112039", "112040"} <= codes_in_group  # tracking identifier and UID


@pytest.mark.parametrize("kind", ["sr", "declined"])
def test_procedure_reported_is_the_study_s_exam_then_the_modality(objects: dict[str, Dataset], kind: str) -> None:
    reported = [item.ConceptCodeSequence[0] for item in objects[kind].ContentSequence
                if item.ConceptNameCodeSequence[0].CodeValue == "121058"]
    assert [(c.CodeValue, c.CodingSchemeDesignator) for c in reported] == [("RPID17", "LOCAL"), ("77477000", "SCT")]


def test_the_key_images_are_the_lesions_key_slices(source: SeriesVolume, findings: Findings, objects: dict[str, Dataset]) -> None:
    lesions = [m for m in findings.measurements if m.kind == "lesion"]
    assert lesions
    expected = {source.frames[int(round(m.diameter_endpoints_kji[0][0]))].sop_instance_uid for m in lesions}  # type: ignore[index]
    kos = objects["kos"]
    referenced = {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for item in _walk(list(kos.ContentSequence))
                  if item.ValueType == "IMAGE"}
    assert referenced == expected
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113000"  # Of Interest
    assert len(key_slices(findings)) == len(expected)
    nothing = replace(findings, measurements=())
    assert build_key_images(source, nothing, "air-job", ResultSettings()) is None


def test_each_classification_finding_is_a_tracked_group(objects: dict[str, Dataset]) -> None:
    groups = [item for item in _walk(list(objects["sr"].ContentSequence)) if item.ValueType == "CONTAINER"
              and item.ConceptNameCodeSequence[0].CodeValue == "125007"]
    tracked = {}
    for group in groups:
        ids = {i.ConceptNameCodeSequence[0].CodeValue: i for i in group.ContentSequence}
        if "112039" in ids:
            tracked[str(ids["112039"].TextValue)] = group
    group = tracked["liver lesion present"]
    evaluation = [i for i in group.ContentSequence if i.ValueType == "CODE"
                  and i.ConceptNameCodeSequence[0].CodeMeaning == "liver lesion present (score 0.90)"]
    assert evaluation and evaluation[0].ConceptCodeSequence[0].CodeMeaning == "Present"
    uid = next(i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "112040").UID
    assert uid == derive_uid("air-job", "finding-liver lesion present")
