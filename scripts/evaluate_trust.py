#!/usr/bin/env python3
"""What each pipeline claims, and what it withholds, on real scans and held-out phantoms.

For ct-organs and the classical baseline, on ``ct_abdomen_3mm`` and ``ct_torso_3mm``
(../shared/data/real-scans/) and on held-out phantoms (seeds 7000-7019, clinical-like grids):
the input gate's decision (and why), what was reported, the Dice of each reported structure
against its reference (TotalSegmentator's labels for the real abdomen; none exists for the
torso; the phantom's own truth), and lesion claims. Then the cost of the gate on a 512x512x300
phantom against the analysis it guards.

    .venv/bin/python scripts/evaluate_trust.py [--phantoms 20] [--no-timing]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai.phantom import BONE, KIDNEY, LIVER, LUNG, LUNG_NODULE, SPLEEN, make_phantom  # noqa: E402
from ai.pipeline import ClassicalCTPipeline, SegmentationPipeline  # noqa: E402
from ai.registry import ModelRegistry  # noqa: E402
from ai.trust.gate import GateFacts, check  # noqa: E402
from ai.types import Findings  # noqa: E402
from tests.support import real_scans  # noqa: E402

PHANTOM_TRUTH = {"lungs": (LUNG, LUNG_NODULE), "liver": (LIVER,), "spleen": (SPLEEN,), "kidneys": (KIDNEY,),
                 "bone": (BONE,)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def reported(findings: Findings, truth: dict[str, np.ndarray] | None) -> tuple[str, str]:
    """("lungs 0.97, bone 0.84, body -", lesion claims)."""
    parts = []
    for info in findings.labels:
        if info.lesion or not (findings.label_map == info.value).any():
            continue
        reference = None if truth is None else truth.get(info.name)
        parts.append(f"{info.name} {dice(findings.label_map == info.value, reference):.2f}" if reference is not None
                     else f"{info.name} -")
    lesions = [m for m in findings.measurements if m.lesion_index is not None]
    claims = [name for name, present in findings.findings.items() if present]
    lesion_text = f"{len(lesions)} lesion segment(s)" + (f"; claims: {', '.join(claims)}" if claims else "")
    return ", ".join(parts), lesion_text


def lung_line(name: str, findings: Findings) -> str:
    """One table row: each region's volume, MLD, LAA%-950 and Perc15 (or what was withheld)."""
    density = findings.extra["lung_density"]
    rows = {row["region"]: row for row in density["rows"]}

    def cell(region: str) -> str:
        row = rows.get(region)
        if row is None:
            return "-"
        tails = "" if row["laa950_percent"] is None else f", LAA%-950 {row['laa950_percent']:.2f} %, Perc15 {row['perc15_hu']:.0f} HU"
        return f"{row['volume_ml']:.0f} mL, MLD {row['mld_hu']:.0f} HU{tails}"

    withheld = "; ".join(density["withheld"]) or "-"
    return (f"| {name} | {density['slice_thickness_mm']:g} mm | {cell('lungs')} | {cell('left lung')} | {cell('right lung')} "
            f"| {withheld} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=20)
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    organs = SegmentationPipeline(ModelRegistry().get("ct-organs"), device="cpu")
    pipelines = {"ct-organs": organs, "ct-baseline": ClassicalCTPipeline()}
    cases: list[tuple[str, object, GateFacts, dict[str, np.ndarray] | None]] = []
    if real_scans.available():
        reference = real_scans.reference_labels()
        truth = {name: np.isin(reference, group) for name, group in real_scans.REFERENCE_GROUPS.items()}
        facts = GateFacts("CT", "ABDOMEN", 3.0)
        cases.append(("ct_abdomen_3mm", real_scans.nifti_volume("ct_abdomen_3mm.nii.gz"), facts, truth))
        cases.append(("ct_torso_3mm", real_scans.nifti_volume("ct_torso_3mm.nii.gz"), facts, None))
    for seed in range(7000, 7000 + args.phantoms):
        rng = np.random.default_rng(seed)
        thickness = float(rng.choice([1.25, 2.0, 2.5, 3.0, 5.0]))
        pixel = float(rng.uniform(1.2, 2.0))
        phantom = make_phantom(seed, shape=(int(400 / thickness), 256, 256), spacing=(thickness, pixel, pixel))
        truth = {name: np.isin(phantom.labels, values) for name, values in PHANTOM_TRUTH.items()}
        cases.append((f"phantom {seed} ({thickness:g} mm)", phantom.volume,
                      GateFacts("CT", "CHEST", thickness, "iodine (phantom)"), truth))
    lung_lines: list[str] = []
    print("| scan | pipeline | gate | reported (Dice) | lesions | withheld, why |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, volume, facts, truth in cases:
        for label, pipeline in pipelines.items():
            decision = check(pipeline.domain, facts, volume)  # type: ignore[arg-type]
            if not decision.applicable:
                print(f"| {name} | {label} | declined ({decision.seconds:.2f} s) | - | - | everything: "
                      f"{decision.summary()} |")
                continue
            findings = pipeline.run(volume)  # type: ignore[arg-type]
            text, lesions = reported(findings, truth)
            withheld = "; ".join(f"{k}: {v}" for k, v in findings.extra.get("withheld", {}).items()) or "-"
            print(f"| {name} | {label} | in ({decision.seconds:.2f} s) | {text} | {lesions} | {withheld} |")
            if "lung_density" in findings.extra:
                lung_lines.append(lung_line(name, findings))
    print("\nLung densitometry (ct-baseline; ai/lung_density.py):\n")
    print("| scan | slices | lungs | left lung | right lung | withheld |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(lung_lines))
    if not args.no_timing:
        phantom = make_phantom(7100, shape=(300, 512, 512), spacing=(1.25, 0.8, 0.8))
        facts = GateFacts("CT", "CHEST", 1.25, "iodine (phantom)")
        started = time.perf_counter()
        decision = check(organs.domain, facts, phantom.volume)
        gate = time.perf_counter() - started
        started = time.perf_counter()
        findings = organs.run(phantom.volume)
        analysis = time.perf_counter() - started
        output_check = findings.extra["timings"]["output check"]
        print(f"\n512x512x300: gate {gate:.2f} s ({'in' if decision.applicable else 'declined'}), output check "
              f"(confidence, plausibility) {output_check:.2f} s, ct-organs analysis {analysis:.1f} s: together "
              f"{100 * (gate + output_check) / analysis:.1f} % of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
