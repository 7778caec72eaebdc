"""Our results in a real web viewer: OHIF 3.13 in headless Chromium (playwright, the system
browser), against Orthanc with DICOMweb, after a phantom study went PACS -> node -> PACS.

The SEG must load (in OHIF's segmentation state, its representation visible) and, on a key
slice, paint the segment's own colour where the phantom's lungs are and not elsewhere; the SR
must open without an error boundary or console error and draw the lesion measurements. OHIF
matches SEG frames by reference, not position (a shifted SEG still "displays"), so the pixel
check maps ground-truth voxels to the screen through cornerstone's own worldToCanvas.
Screenshots are kept under test-artifacts/viewer/ for a person to look at.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ai.phantom import LUNG, Phantom, make_phantom
from dicom_node.config import parse_config
from dicom_node.orthanc import Orthanc, free_port
from dicom_node.service import Node
from dicom_node.synthetic import write_volume_series
from dicom_node.viewer import ViewerServer, fetch_ohif, start_viewer_stack
from dicom_node.volume import SeriesVolume, load_series

from .conftest import config_dict
from .peers import wait_for

pytestmark = pytest.mark.slow

ARTIFACTS = Path("test-artifacts/viewer")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LUNG_GREEN = (128, 174, 128)  # ct-classical-baseline's lungs colour


@dataclass
class Study:
    phantom: Phantom
    source: SeriesVolume
    orthanc: Orthanc
    viewer: ViewerServer
    study_uid: str
    seconds: float


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    """Orthanc (DICOMweb) sends a phantom CT with lung nodules to a node (classical baseline);
    the SEG and SR come back to Orthanc, which OHIF reads."""
    started = time.perf_counter()
    tmp = tmp_path_factory.mktemp("viewer")
    dist = fetch_ohif()
    phantom = make_phantom(5, shape=(48, 128, 128), spacing=(2.5, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 3))
    files = write_volume_series(phantom.volume, tmp / "series", seed=5)
    orthanc_port = free_port()
    config = parse_config(config_dict(
        tmp,
        peers=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port}],
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline", "destinations": ["sender"]}],
        pipelines={"baseline": {"kind": "classical"}},
        results={"path": str(tmp / "results")},
        jobs={"workers": 1, "poll_seconds": 0.2},
        delivery={"interval_seconds": 0.2},
        completion={"series_stable_seconds": 2, "study_stable_seconds": 3, "sweep_interval_seconds": 0.2},
    ), "viewer-test")
    node = Node(config)
    node.start()
    orthanc, viewer = start_viewer_stack(tmp / "orthanc", dist, dicom_port=orthanc_port,
                                         modalities={"ainode": ["AI_NODE", "127.0.0.1", node.port]})
    try:
        for path in files:
            orthanc.upload(path)
        source = load_series(files)
        study_uid = str(source.datasets[0].StudyInstanceUID)
        orthanc.call("POST", "/modalities/ainode/store", {"Resources": [orthanc.study_id(study_uid)], "Synchronous": True})
        wait_for(lambda: {"SEG", "SR"} <= {s["MainDicomTags"].get("Modality") for s in orthanc.series_of_study(study_uid)},
                 120, "SEG and SR in Orthanc")
        node.stop()
        yield Study(phantom, source, orthanc, viewer, study_uid, time.perf_counter() - started)
    finally:
        node.stop()
        viewer.stop()
        orthanc.stop()


@pytest.fixture
def page(study: Study) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing (Debian package chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
        page.problems = []  # console errors and uncaught exceptions
        page.outside = []  # requests that leave our origin
        page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.problems.append(f"uncaught: {e}"))
        page.on("request", lambda r: page.outside.append(r.url)
                if not r.url.startswith((study.viewer.url, "data:", "blob:")) else None)
        page.goto(study.viewer.study_url(study.study_uid))
        page.get_by_text("Skip all").click(timeout=60_000)  # the first-visit tour blocks every click
        yield page
        browser.close()


def open_series(page: Any, modality: str) -> None:
    thumbnails = page.locator("[data-cy='study-browser-thumbnail-no-image']")
    wait_for(lambda: thumbnails.count() >= 2, 60, "the SEG and SR thumbnails")
    target = next(i for i in range(thumbnails.count()) if thumbnails.nth(i).inner_text().startswith(modality))
    thumbnails.nth(target).dblclick()


def show_slice(page: Any, sop_instance_uid: str) -> None:
    page.evaluate("""async (uid) => {
        const viewport = window.cornerstone.getEnabledElements()[0].viewport;
        const index = viewport.getImageIds().findIndex(id => id.includes(uid));
        if (index < 0) throw new Error('slice not in the viewport: ' + uid);
        await viewport.setImageIdIndex(index);
        viewport.render();
    }""", sop_instance_uid)
    time.sleep(1.5)


def screen_points(page: Any, source: SeriesVolume, k: int, points_ji: np.ndarray) -> np.ndarray:
    """Page pixel coordinates of voxel centres (j, i) on slice k, via cornerstone's worldToCanvas."""
    kji = np.column_stack([np.full(len(points_ji), k), points_ji]).astype(float)
    world = source.volume.index_to_patient(kji).tolist()
    return np.asarray(page.evaluate("""(world) => {
        const element = window.cornerstone.getEnabledElements()[0];
        const rect = element.viewport.canvas.getBoundingClientRect();
        return world.map(w => { const c = element.viewport.worldToCanvas(w); return [rect.left + c[0], rect.top + c[1]]; });
    }""", world))


def greenish(rgb: np.ndarray) -> np.ndarray:
    """The lungs' colour blended over dark air: green clearly above red and blue."""
    return (rgb[:, 1] - np.maximum(rgb[:, 0], rgb[:, 2])) > 12


def test_seg_loads_and_paints_the_lungs_where_the_phantom_has_them(study: Study, page: Any) -> None:
    from scipy import ndimage

    started = time.perf_counter()
    open_series(page, "SEG")
    page.locator("[data-cy='yes-hydrate-btn']").click(timeout=60_000)
    segmentations = wait_for(lambda: page.evaluate(
        "() => window.services.segmentationService.getSegmentations().map(s => ({label: s.label, segments: Object.values(s.segments).map(x => x.label)}))"),
        60, "the segmentation in OHIF's state")
    assert segmentations[0]["label"].startswith("AI segmentation (ct-classical-baseline")
    assert {"lungs", "bone"} <= set(segmentations[0]["segments"])
    visible = page.evaluate("""() => window.services.segmentationService.getSegmentationRepresentations(
        window.cornerstone.getEnabledElements()[0].viewport.id).map(r => r.visible)""")
    assert visible and all(visible)

    truth = study.phantom.labels == LUNG
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    show_slice(page, study.source.frames[k].sop_instance_uid)
    inside = np.argwhere(ndimage.binary_erosion(truth[k], iterations=3))
    outside = np.argwhere(~ndimage.binary_dilation(truth[k], iterations=4) & (study.phantom.labels[k] > 0)
                          & (study.phantom.labels[k] != LUNG))
    rng = np.random.default_rng(0)
    inside = inside[rng.choice(len(inside), size=min(300, len(inside)), replace=False)]
    outside = outside[rng.choice(len(outside), size=min(300, len(outside)), replace=False)]
    shot = ARTIFACTS / "seg-key-slice.png"
    page.screenshot(path=str(shot))
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def colours(points: np.ndarray) -> np.ndarray:
        xy = np.rint(screen_points(page, study.source, k, points)).astype(int)
        return image[xy[:, 1], xy[:, 0]]

    inside_rgb, outside_rgb = colours(inside), colours(outside)
    assert greenish(inside_rgb).mean() > 0.9, f"lungs not painted: {inside_rgb[:5].tolist()}"
    assert greenish(outside_rgb).mean() < 0.05, f"paint outside the lungs: {outside_rgb[greenish(outside_rgb)][:5].tolist()}"
    # In the segment's own colour: the painted pixels lean towards (128, 174, 128).
    hue = inside_rgb.mean(axis=0)
    assert hue[1] > hue[0] and hue[1] > hue[2]
    assert page.problems == [], page.problems
    assert page.outside == [], f"requests left 127.0.0.1: {page.outside[:5]}"
    print(f"\nviewer check: fixture {study.seconds:.1f} s, SEG loaded and checked in {time.perf_counter() - started:.1f} s; "
          f"screenshot {shot}")


def test_sr_opens_without_errors_and_draws_the_lesions(study: Study, page: Any) -> None:
    open_series(page, "SR")
    # The SR viewport draws each measurement group as a cornerstone annotation (tool "SRSCOORD").
    measurements = wait_for(lambda: page.evaluate(
        """() => window.cornerstoneTools.annotation.state.getAllAnnotations()
              .map(a => ({tool: a.metadata.toolName, text: JSON.stringify(a.data.label || a.data.labels || '')}))"""),
        60, "SR measurements drawn in OHIF")
    time.sleep(1.0)
    page.screenshot(path=str(ARTIFACTS / "sr.png"))
    body = page.inner_text("body")
    assert "Something went wrong" not in body
    assert page.problems == [], page.problems
    drawn = [m for m in measurements if m["tool"] == "DICOMSRDisplay"]
    text = " ".join(m["text"] for m in drawn)
    print(f"\nSR annotations drawn: {len(drawn)}; {text[:300]}")
    # What the SR in Orthanc says: every group with image coordinates is drawn, each lesion's
    # longest diameter among them.
    import io

    import highdicom as hd
    from pydicom.sr.codedict import codes

    sr_id = next(i for s in study.orthanc.series_of_study(study.study_uid) if s["MainDicomTags"].get("Modality") == "SR"
                 for i in s["Instances"])
    sr = hd.sr.srread(io.BytesIO(study.orthanc.instance_file(sr_id)))
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(drawn) == len(planar)
    lesions = [g for g in planar if str(g.tracking_identifier).startswith("lung nodule ")]
    assert len(lesions) == len([m for m in study.phantom.lesions if m.label == 7]) >= 1
    for group in lesions:
        long_axis = group.get_measurements(name=codes.SCT.LongAxis)[0].value
        assert f"{long_axis:.2f} mm" in text, (long_axis, text)
    key = lesions[0].roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID  # type: ignore[union-attr]
    show_slice(page, str(key))
    page.screenshot(path=str(ARTIFACTS / "sr-lesion-slice.png"))
    assert page.problems == [], page.problems
    assert page.outside == [], f"requests left 127.0.0.1: {page.outside[:5]}"


