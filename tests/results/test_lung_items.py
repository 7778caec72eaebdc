"""Lung densitometry in the SR: the numbers the baseline computed, in the lungs' groups, coded as
lung_items.py says, with the conditions beside them; dciodvfy stays clean."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ai.phantom import make_lung_phantom
from ai.pipeline import ClassicalCTPipeline
from dicom_node.results import ResultSettings, build_report, build_segmentation
from dicom_node.results.lung_items import LAA950, MEAN_LUNG_DENSITY, PERC15
from dicom_node.storage.volume import load_series
from dicom_node.tools.synthetic import write_volume_series

from .test_results import dciodvfy_errors


def _values(group: object, name: object) -> list[float]:
    return [float(m.value) for m in group.get_measurements(name=name)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("thickness", [1.0, 2.5])
def test_lung_numbers_in_the_sr(tmp_path: Path, thickness: float) -> None:
    phantom = make_lung_phantom(21, spacing=(thickness, 3.0, 3.0), shape=(int(200 / thickness), 100, 120), emphysema=0.08)
    files = write_volume_series(phantom.volume, tmp_path / "src", seed=21)
    for path in files:  # the kernel as a scanner records it (a soft one, as densitometry wants)
        ds = pydicom.dcmread(path)
        ds.ConvolutionKernel = "FC07"
        ds.save_as(path)
    source = load_series(files)
    findings = ClassicalCTPipeline().run(source.volume)
    density = findings.extra["lung_density"]
    rows = {row["side"]: row for row in density["rows"]}
    assert set(rows) == {None, "left", "right"}
    seg = build_segmentation(source, findings, "lung-job", ResultSettings())
    sr = build_report(source, findings, seg, "lung-job", ResultSettings())
    assert dciodvfy_errors(sr, tmp_path / "sr.dcm") == []
    read = hd.sr.srread(tmp_path / "sr.dcm")
    lungs = next(g for g in read.content.get_volumetric_roi_measurement_groups() if str(g.tracking_identifier) == "lungs")
    sides = {str(g.tracking_identifier): g for g in read.content.get_planar_roi_measurement_groups()
             if str(g.tracking_identifier).endswith(" lung")}
    assert set(sides) == {"left lung", "right lung"}
    for group, row in ((lungs, rows[None]), (sides["left lung"], rows["left"]), (sides["right lung"], rows["right"])):
        assert _values(group, MEAN_LUNG_DENSITY) == [pytest.approx(row["mld_hu"])]
        assert _values(group, codes.SCT.Volume)[0] == pytest.approx(row["volume_ml"], abs=0.1)
        if thickness <= 1.5:
            assert _values(group, LAA950) == [pytest.approx(row["laa950_percent"])] and row["laa950_percent"] > 3
            assert _values(group, PERC15) == [pytest.approx(row["perc15_hu"])]
        else:
            assert _values(group, LAA950) == [] and _values(group, PERC15) == []
    texts = [(item.ConceptNameCodeSequence[0].CodeMeaning, item.get("TextValue", "")) for container in read.ContentSequence
             if container.ValueType == "CONTAINER" for item in container.get("ContentSequence", []) if item.ValueType == "TEXT"]
    assert ("Slice Thickness", f"lung densitometry on {thickness:g} mm slices") in texts
    assert ("Reconstruction Algorithm", "convolution kernel FC07") in texts
    withheld = [value for name, value in texts if name == "Withheld from this report"]
    if thickness > 1.5:
        assert any(v.startswith("lung densitometry: LAA%-950 and Perc15: slices 2.5 mm thick") for v in withheld), texts
    else:
        assert not any(v.startswith("lung densitometry") for v in withheld)
