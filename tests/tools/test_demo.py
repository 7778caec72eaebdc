"""``dicom-node demo``: one command from a phantom study to SEG + SR at a PACS, a measurement
table and a PNG preview."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..support import processes
from ..support.peers import wait_for

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "dicom_node.cli"]


@pytest.mark.parametrize(("pipeline", "pacs"), [("ct-organs", []), ("ct-baseline", ["--orthanc"])])
def test_demo_prints_measurements_and_writes_a_preview(tmp_path: Path, pipeline: str, pacs: list[str]) -> None:
    """Run from an empty folder with no configuration file, as a new user would: the demo
    builds its own configuration and writes under the current folder (or --out DIR)."""
    if pacs:
        workdir, where = tmp_path / "demo", ["--out", str(tmp_path / "demo")]
    else:
        workdir, where = tmp_path / "var" / "demo", []
    done = processes.run([*CLI, "demo", *where, "--pipeline", pipeline, *pacs, "--timeout", "240"], timeout=300, cwd=tmp_path)
    assert done.returncode == 0, processes.describe_run(done)
    out = done.stdout + done.stderr
    assert "lungs" in out and "volume (mL)" in out
    # One row per structure (the SR's twin groups merged): both lungs together carry volume and
    # mean, no diameter (one measured across two lungs describes neither); each lung its own.
    def cells(prefix: str) -> list[list[str]]:
        return [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith(f"│ {prefix} ")]

    assert [row[3] for row in cells("lungs")] == [""] and all(cells("lungs")[0][:3]), cells("lungs")
    for side in ("left lung", "right lung"):
        assert len(cells(side)) == 1 and all(cells(side)[0]), cells(side)
    assert "SR delivered to the PACS" in out
    if pacs:
        assert "Orthanc (PACS, http://127.0.0.1:" in out
    preview = Image.open(workdir / "preview.png")
    assert preview.size == (3 * 256, 256)
    # Colour over grey: the overlay is there.
    rgb = np.asarray(preview.convert("RGB")).astype(int)
    assert ((rgb.max(axis=2) - rgb.min(axis=2)) > 20).mean() > 0.05


def test_demo_refuses_to_clear_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "file.txt").write_text("keep me")
    done = processes.run([*CLI, "demo", "--workdir", str(tmp_path / "precious")], timeout=60)
    assert done.returncode != 0 and "was not made by the demo" in done.stderr
    assert (tmp_path / "precious" / "file.txt").read_text() == "keep me"


def test_demo_viewer_serves_the_study_with_its_results_in_ohif(tmp_path: Path, ohif_dist: Path) -> None:
    import re

    from playwright.sync_api import sync_playwright

    from .test_viewer import CHROMIUM, CHROMIUM_ARGS

    demo = processes.start([*CLI, "demo", "--workdir", str(tmp_path / "demo"), "--pipeline", "ct-baseline", "--viewer",
                            "--serve-seconds", "60"], tmp_path / "demo.log", name="dicom-node demo --viewer",
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        def printed_url() -> str | None:
            found = re.search(r"(http://127\.0\.0\.1:\d+/viewer\?StudyInstanceUIDs=[0-9.]+)", demo.output())
            if found:
                return found.group(1)
            if demo.proc.poll() is not None:
                raise AssertionError(f"the demo ended (exit {demo.proc.returncode}) without printing a viewer URL")
            return None

        url = wait_for(printed_url, 400, "the demo's viewer URL")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.get_by_text("Skip all").click(timeout=60_000)
            thumbnails = page.locator("[data-cy^='study-browser-thumbnail']")
            page.wait_for_function("() => document.querySelectorAll(\"[data-cy^='study-browser-thumbnail']\").length >= 3",
                                   timeout=60_000)
            texts = [thumbnails.nth(i).inner_text() for i in range(thumbnails.count())]
            browser.close()
        assert any(t.startswith("SEG") for t in texts) and any(t.startswith("SR") for t in texts), texts
    finally:
        demo.stop(timeout=60)
    assert demo.proc.returncode in (0, -15), f"the demo exited with {demo.proc.returncode}"
