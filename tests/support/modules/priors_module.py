"""Records the priors it was handed (task.json's list, and what each folder holds) to the file
``PRIORS_RECORD`` names, then labels the series as nifti_module does."""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

import pydicom

task = json.loads((Path(os.environ["MERCURE_IN_DIR"]) / "task.json").read_text())
seen = []
for prior in task["priors"]:
    folder = Path(prior["folder"])
    studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in sorted(folder.glob("*.dcm"))}
    seen.append({**prior, "studies_in_folder": sorted(studies), "files_in_folder": len(list(folder.glob("*.dcm")))})
Path(os.environ["PRIORS_RECORD"]).write_text(json.dumps({"priors": seen, "priors_dir": os.environ.get("DICOM_NODE_PRIORS_DIR", "")}))
runpy.run_path(str(Path(__file__).with_name("nifti_module.py")), run_name="__main__")
