#!/usr/bin/env python3
"""Per-structure confidence of a model (ai/trust/output_check.py) on held-out in-domain data and,
ungated, on real scans it would decline: the numbers its card's ``output_checks`` thresholds
are set from.

    .venv/bin/python scripts/calibrate_confidence.py [--model ct-organs] [--phantoms 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai.phantom import make_phantom  # noqa: E402
from ai.pipeline import SegmentationPipeline  # noqa: E402
from ai.registry import ModelRegistry  # noqa: E402
from tests.support import real_scans  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ct-organs")
    parser.add_argument("--phantoms", type=int, default=8)
    args = parser.parse_args()
    card = ModelRegistry().get(args.model)
    # Without the card's checks: the raw confidences, whatever the thresholds are now.
    raw = type(card)(card.data.model_copy(update={"output_checks": {}, "classification": [
        c.model_copy(update={"host_label": None}) for c in card.data.classification]}), card.folder)
    pipeline = SegmentationPipeline(raw, device="cpu")
    rows: dict[str, list[float]] = {}
    for seed in range(7000, 7000 + args.phantoms):
        rng = np.random.default_rng(seed)
        thickness = float(rng.choice([1.25, 2.0, 2.5, 3.0, 5.0]))
        pixel = float(rng.uniform(1.2, 2.0))
        phantom = make_phantom(seed, shape=(int(400 / thickness), 256, 256), spacing=(thickness, pixel, pixel))
        confidence = pipeline.run(phantom.volume).extra["confidence"]
        print(f"phantom {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in confidence.items()))
        for name, value in confidence.items():
            rows.setdefault(name, []).append(value)
    print("held-out phantoms, per structure: min / median")
    for name, values in rows.items():
        print(f"  {name}: {min(values):.3f} / {float(np.median(values)):.3f}")
    if real_scans.available():
        for scan in ("ct_abdomen_3mm.nii.gz", "ct_torso_3mm.nii.gz"):
            confidence = pipeline.run(real_scans.nifti_volume(scan)).extra["confidence"]
            print(f"{scan} (ungated: the gate declines it): " + ", ".join(f"{k} {v:.3f}" for k, v in confidence.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
