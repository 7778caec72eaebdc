"""``dicom-node demo``: one command from a phantom study to SEG + SR at a PACS, a measurement
table and a PNG preview."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    done = subprocess.run([*CLI, "demo", *where, "--pipeline", pipeline, *pacs, "--timeout", "240"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "lungs" in out and "volume (mL)" in out
    # One row per structure, volume and diameter together (the SR's twin groups merged).
    lung_rows = [line for line in out.splitlines() if line.startswith("│ lungs")]
    assert len(lung_rows) == 1 and len([c for c in lung_rows[0].split("│") if c.strip()]) == 4, lung_rows
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
    done = subprocess.run([*CLI, "demo", "--workdir", str(tmp_path / "precious")], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "was not made by the demo" in done.stderr
    assert (tmp_path / "precious" / "file.txt").read_text() == "keep me"


def test_demo_viewer_serves_the_study_with_its_results_in_ohif(tmp_path: Path, ohif_dist: Path) -> None:
    import re

    from playwright.sync_api import sync_playwright

    from .test_viewer import CHROMIUM, CHROMIUM_ARGS

    proc = subprocess.Popen([*CLI, "demo", "--workdir", str(tmp_path / "demo"), "--pipeline", "ct-baseline", "--viewer",
                             "--serve-seconds", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        printed: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            printed.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+/viewer\?StudyInstanceUIDs=[0-9.]+)", line)
            if found:
                url = found.group(1)
                break
        assert url, f"the demo printed no viewer URL (exit {proc.poll()}); its output:\n{''.join(printed)[-6000:]}"
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
        proc.terminate()
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode in (0, -15)
