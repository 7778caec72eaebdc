#!/usr/bin/env python3
"""What de-identification costs per instance, on the ingest benchmark's big study (300 x
512x512 int16 CT, with the identifying attributes and a private block a real scanner writes).

Three paths, each timed over the same files in the same process, alternated per round so they
see the same machine state:

  copy     read each file and write it again (the reference: what any export costs)
  export   read, de-identify (the profile below), write: ``dicom-node deidentify``
  engine   de-identify an already-read dataset (the sender's extra work per forwarded instance)

Prints ms per instance (medians over rounds) and export / copy.

    .venv/bin/python scripts/bench_deidentify.py [--slices 300] [--rounds 3] [--options retain_longitudinal_modified_dates ...]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import dcmread  # noqa: E402

from dicom_node.privacy.deidentify import Deidentifier, Profile  # noqa: E402
from dicom_node.privacy.pseudonyms import PseudonymKey  # noqa: E402
from dicom_node.tools.synthetic import write_ct_series  # noqa: E402


def identify(path: Path) -> None:
    ds = dcmread(path)
    ds.PatientName, ds.PatientBirthDate, ds.InstitutionName = "Testpatient^Gertrud", "19480312", "St. Example Hospital"
    ds.OperatorsName, ds.ReferringPhysicianName, ds.AccessionNumber = "Radiographer^Rita", "Referrer^Robert", "ACC-1"
    ds.StudyDescription, ds.StationName = "CT abdomen Testpatient", "CT-ROOM-3"
    ds.add_new(0x00290010, "LO", "VENDOR PRIVATE")
    for element in range(0x1001, 0x1021):
        ds.add_new(0x00290000 | element, "LO", f"private value {element}")
    ds.save_as(path, enforce_file_format=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--options", nargs="*", default=["retain_longitudinal_modified_dates", "clean_descriptors"])
    args = parser.parse_args()
    engine = Deidentifier(Profile("bench", frozenset(args.options)), PseudonymKey(os.urandom(32)))
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        files = write_ct_series(root / "in", args.slices, 512, 512, seed=3)
        for path in files:
            identify(path)
        out = root / "out"
        out.mkdir()
        loaded = [dcmread(p) for p in files]

        def copy_all() -> None:
            for n, path in enumerate(files):
                dcmread(path).save_as(out / f"{n}.dcm", enforce_file_format=True)

        def export_all() -> None:
            for n, path in enumerate(files):
                ds = dcmread(path)
                engine.apply(ds)
                ds.save_as(out / f"{n}.dcm", enforce_file_format=True)

        def engine_only() -> float:
            fresh = [copy.deepcopy(d) for d in loaded]  # not timed
            started = time.perf_counter()
            for ds in fresh:
                engine.apply(ds)
            return time.perf_counter() - started

        times: dict[str, list[float]] = {"copy": [], "export": [], "engine": []}
        ratios = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            copy_all()
            times["copy"].append(time.perf_counter() - started)
            started = time.perf_counter()
            export_all()
            times["export"].append(time.perf_counter() - started)
            times["engine"].append(engine_only())
            ratios.append(times["export"][-1] / times["copy"][-1])
    per = {name: statistics.median(values) / args.slices * 1000 for name, values in times.items()}
    print(f"{args.slices} x 512x512 CT instances, profile options: {', '.join(args.options) or 'none'}, {args.rounds} rounds")
    for name in ("copy", "export", "engine"):
        print(f"  {name:7s} {per[name]:7.2f} ms per instance")
    print(f"  export / copy: {statistics.median(ratios):.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
