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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ai.phantom import LUNG, Phantom, make_phantom
from dicom_node.config import parse_config
from dicom_node.service.node import Node
from dicom_node.storage.volume import SeriesVolume, load_series
from dicom_node.tools.orthanc import Orthanc, free_port
from dicom_node.tools.synthetic import write_volume_series
from dicom_node.tools.viewer import ViewerServer, start_viewer_stack

from ..conftest import config_dict
from ..support import processes
from ..support.peers import wait_for

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


@dataclass
class Stack:
    """Two phantom studies analysed by one node: the first by the classical baseline (SEG, SR),
    the second by ct-organs with the uncertainty map asked for (SEG, SR, Parametric Map)."""

    classical: Study
    organs: Study


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, ohif_dist: Path) -> Iterator[Stack]:
    """Orthanc (DICOMweb) sends each phantom CT to a node; the results come back to Orthanc,
    which OHIF reads. Routes pick the pipeline by series description."""
    started = time.perf_counter()
    tmp = tmp_path_factory.mktemp("viewer")
    dist = ohif_dist
    phantoms = {
        "classical": make_phantom(5, shape=(48, 128, 128), spacing=(2.5, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 3)),
        "organs": make_phantom(8, shape=(48, 128, 128), spacing=(2.5, 2.0, 2.0), liver_lesions=(1, 1), lung_nodules=(0, 0)),
    }
    files = {name: write_volume_series(phantom.volume, tmp / name, seed=5 if name == "classical" else 8,
                                       description=f"Synthetic CT phantom ({name})")
             for name, phantom in phantoms.items()}
    orthanc_port = free_port()
    config = parse_config(config_dict(
        tmp,
        peers=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port}],
        routes=[{"name": "ct", "match": {"modality": "CT", "series_description": "classical"}, "pipeline": "baseline",
                 "destinations": ["sender"]},
                {"name": "organs", "match": {"modality": "CT", "series_description": "organs"}, "pipeline": "organs",
                 "destinations": ["sender"], "key_images": True}],
        pipelines={"baseline": {"kind": "classical"}, "organs": {"kind": "model", "model": "ct-organs", "device": "cpu"}},
        results={"path": str(tmp / "results"), "uncertainty_map": True},
        jobs={"workers": 1, "poll_seconds": 0.2},
        delivery={"interval_seconds": 0.2},
        completion={"series_stable_seconds": 2, "study_stable_seconds": 3, "sweep_interval_seconds": 0.2},
    ), "viewer-test")
    node = Node(config)
    node.start()
    orthanc, viewer = start_viewer_stack(tmp / "orthanc", dist, dicom_port=orthanc_port,
                                         modalities={"ainode": ["AI_NODE", "127.0.0.1", node.port]})
    processes.watch(orthanc.proc, log=tmp / "orthanc" / "orthanc.log", name="Orthanc (OHIF's DICOMweb)")
    try:
        studies = {}
        for name, paths in files.items():
            for path in paths:
                orthanc.upload(path)
            source = load_series(paths)
            study_uid = str(source.datasets[0].StudyInstanceUID)
            orthanc.call("POST", "/modalities/ainode/store", {"Resources": [orthanc.study_id(study_uid)], "Synchronous": True})
            studies[name] = (source, study_uid)
        wait_for(lambda: {"SEG", "SR"} <= {s["MainDicomTags"].get("Modality") for s in orthanc.series_of_study(studies["classical"][1])},
                 120, "SEG and SR of the classical study in Orthanc")
        # SEG, SR, the Parametric Map and the key images (KOS) beside the source series.
        wait_for(lambda: len(orthanc.series_of_study(studies["organs"][1])) >= 5, 120, "ct-organs' four results in Orthanc")
        node.stop()
        seconds = time.perf_counter() - started
        yield Stack(*(Study(phantoms[name], studies[name][0], orthanc, viewer, studies[name][1], seconds)
                      for name in ("classical", "organs")))
    finally:
        node.stop()
        viewer.stop()
        orthanc.stop()


@pytest.fixture(scope="module")
def study(stack: Stack) -> Study:
    return stack.classical


@contextmanager
def viewer_page(study: Study) -> Iterator[Any]:
    """OHIF on ``study`` in headless Chromium; console errors and requests leaving 127.0.0.1
    are collected on the page (``problems``, ``outside``)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing (Debian package chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
        page.problems = []  # console errors and uncaught exceptions
        page.outside = []  # requests that leave our origin
        console: list[str] = []  # everything the page logged, for a failure's report
        processes.note("Chromium (OHIF's console)", lambda: "\n".join(console))
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.problems.append(f"uncaught: {e}"))
        page.on("request", lambda r: page.outside.append(r.url)
                if not r.url.startswith((study.viewer.url, "data:", "blob:")) else None)
        page.goto(study.viewer.study_url(study.study_uid))
        page.get_by_text("Skip all").click(timeout=60_000)  # the first-visit tour blocks every click
        yield page
        browser.close()


@pytest.fixture
def page(study: Study) -> Iterator[Any]:
    with viewer_page(study) as opened:
        yield opened


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




def test_the_uncertainty_map_opens_over_its_ct_with_our_values(stack: Stack) -> None:
    """OHIF opens ct-organs' Parametric Map as an overlay on its CT: the values it loaded are
    ours (x100, OHIF's display scale) voxel for voxel, found through world coordinates, and the
    overlay colours the uncertain voxels while the sure ones show the CT's grey."""
    import io

    import pydicom
    from scipy import ndimage

    study = stack.organs
    results = [s for s in study.orthanc.series_of_study(study.study_uid) if s["MainDicomTags"].get("SeriesNumber") == "9003"]
    assert len(results) == 1, "the Parametric Map is in Orthanc"
    stored = pydicom.dcmread(io.BytesIO(study.orthanc.instance_file(results[0]["Instances"][0])))
    assert stored.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    expected = _expected_uncertainty(stored, study.source)
    with viewer_page(study) as page:
        open_series(page, "PMAP")
        wait_for(lambda: page.evaluate("""() => {
            const ds = window.services.displaySetService.getActiveDisplaySets().find(d => d.Modality === 'PMAP');
            return ds && ds.isLoaded && !!window.cornerstone.cache.getVolume(ds.displaySetInstanceUID);
        }"""), 60, "the Parametric Map loaded as a volume")
        rng = np.random.default_rng(0)
        uncertain = np.argwhere(expected >= 0.2)
        sure = np.argwhere(expected == 0)
        points = np.concatenate([uncertain[rng.choice(len(uncertain), 300, replace=False)],
                                 sure[rng.choice(len(sure), 300, replace=False)]])
        world = study.source.volume.index_to_patient(points.astype(float)).tolist()
        loaded = np.asarray(page.evaluate("""(world) => {
            const ds = window.services.displaySetService.getActiveDisplaySets().find(d => d.Modality === 'PMAP');
            const volume = window.cornerstone.cache.getVolume(ds.displaySetInstanceUID);
            const data = volume.voxelManager.getCompleteScalarDataArray();
            const [nx, ny] = volume.dimensions;
            return world.map(w => { const [i, j, k] = volume.imageData.worldToIndex(w).map(Math.round);
                                    return data[i + nx * (j + ny * k)]; });
        }""", world))
        want = expected[tuple(points.T)] * 100
        assert np.abs(loaded - want).max() < 0.01, f"OHIF's values differ from ours: {np.abs(loaded - want).max():.3f}"
        # What the reader sees, on the slice the viewport shows.
        time.sleep(1.5)
        k = _slice_of_focal_point(page, study.source)
        shot = ARTIFACTS / "uncertainty-map.png"
        page.screenshot(path=str(shot))
        image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        on_slice = expected[k]
        strong = np.argwhere(ndimage.grey_erosion(on_slice, size=3) >= 0.3)
        calm = np.argwhere(ndimage.binary_erosion(on_slice == 0, iterations=4) & (study.phantom.labels[k] > 0))
        assert len(strong) >= 20 and len(calm) >= 100, (len(strong), len(calm))

        def spread(points_ji: np.ndarray) -> np.ndarray:
            xy = np.rint(screen_points(page, study.source, k, points_ji)).astype(int)
            rgb = image[xy[:, 1], xy[:, 0]]
            return rgb.max(axis=1) - rgb.min(axis=1)  # 0 for grey, large for a colour

        strong_spread, calm_spread = spread(strong), spread(calm)
        print(f"\nuncertainty overlay on slice {k}: colour spread {np.median(strong_spread):.0f} where uncertain "
              f"(>= 0.3), {np.median(calm_spread):.0f} where sure; screenshot {shot}")
        assert (strong_spread > 40).mean() > 0.8
        assert (calm_spread < 12).mean() > 0.95
        assert page.problems == [], page.problems
        assert page.outside == [], f"requests left 127.0.0.1: {page.outside[:5]}"


def _expected_uncertainty(stored: Any, source: SeriesVolume) -> np.ndarray:
    """The map Orthanc holds, as a (k, j, i) array on the source's grid (its frames put back on
    the slices they reference)."""
    slice_of = {frame.sop_instance_uid: k for k, frame in enumerate(source.frames)}
    out = np.full(source.volume.shape, np.nan, dtype=np.float32)
    for n, group in enumerate(stored.PerFrameFunctionalGroupsSequence):
        out[slice_of[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]] = stored.pixel_array[n]
    assert not np.isnan(out).any()
    return out


def _slice_of_focal_point(page: Any, source: SeriesVolume) -> int:
    """The source slice the (volume) viewport shows: its camera's focal point on the slice axis."""
    focal = np.asarray(page.evaluate("() => window.cornerstone.getEnabledElements()[0].viewport.getCamera().focalPoint"))
    volume = source.volume
    ijk = np.linalg.solve(np.asarray(volume.direction) * np.asarray(volume.spacing[::-1]), focal - np.asarray(volume.origin))
    return int(round(ijk[2]))


def test_the_key_images_reach_the_pacs_as_a_key_object_selection(stack: Stack) -> None:
    """The route asked for key images: Orthanc holds a KO series whose images are the slices the
    SR's lesion measurements were drawn on (this phantom's reported lesions are lung nodule
    candidates at its top: the key images show a radiologist exactly what the AI claims)."""
    import io

    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    study = stack.organs
    series = study.orthanc.series_of_study(study.study_uid)
    [ko] = [s for s in series if s["MainDicomTags"].get("Modality") == "KO"]
    [sr_series] = [s for s in series if s["MainDicomTags"].get("Modality") == "SR"]
    kos = pydicom.dcmread(io.BytesIO(study.orthanc.instance_file(ko["Instances"][0])))
    assert kos.ConceptNameCodeSequence[0].CodeMeaning == "Of Interest"
    referenced = {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for item in kos.ContentSequence
                  if item.ValueType == "IMAGE"}
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(study.orthanc.instance_file(sr_series["Instances"][0]))))
    lesion_images = {str(g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                     for g in sr.content.get_planar_roi_measurement_groups()
                     if g.get_measurements(name=codes.SCT.LongAxis) and g.roi is not None}
    assert referenced and referenced == lesion_images
