"""Pipelines of kind ``command``: an external program or container that follows mercure's
processing-module contract, so a module built for mercure (or a MONAI Deploy application that
reads ``MONAI_INPUTPATH``) runs here unchanged.

The contract, as the node carries it out:

* the series' DICOM files in an input folder (``MERCURE_IN_DIR``, also ``MONAI_INPUTPATH``),
  with ``task.json`` (the job's id, the series, the pipeline's ``settings``);
* an empty output folder (``MERCURE_OUT_DIR``, also ``MONAI_OUTPUTPATH``) for the results;
* ``{in}`` and ``{out}`` in the command line are replaced by the two folders (for a container's
  ``-v`` mounts); the program runs in its own process group, killed whole at the timeout;
* a route with ``priors`` (flow/priors.py): each prior study in its own folder
  ``DICOM_NODE_PRIORS_DIR/<rank>`` (1 the newest; ``{priors}`` in the command line), and
  task.json's ``priors`` lists them (rank, study_uid, study_date, folder, files); always
  present in task.json, empty without priors.

What it writes becomes the job's results:

* a DICOM Segmentation, checked before anything is sent: same study, it references the series,
  and every frame lies on one of the series' slices (orientation, rows, columns, pixel spacing,
  position); sent as it is;
* or a NIfTI label map (``*.nii``/``*.nii.gz``) on the series' voxel grid (any axis order or
  flip) with ``labels.json`` (``{"1": "liver"}`` or ``{"1": {"name": ..., "category": [...],
  "type": [...], "color": [r, g, b]}}``): the node makes its own SEG and SR from it; a label
  without codes takes the pipeline's ``codes:`` entry, else a generic "Tissue" code, and keeps
  its name;
* any other DICOM object of the same study passes through to the destinations.

A non-zero exit (with the tail of stderr) or a timeout is a job failure, retried like any other;
output that is not one of the above (no result, a file that is not what it claims, a SEG of
another series) fails the job for good, since running it again gives the same. The work folders
are removed whatever happens.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ai.digest import rules_digest
from ai.measure import measure_all
from ai.trust.domain import Domain
from ai.types import Findings, LabelInfo, external_label

from ..config import PipelineSpec
from ..errors import CommandFailed, CommandOutputError
from ..storage.volume import SeriesVolume

log = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
STDERR_TAIL = 2000


@dataclass
class CommandOutput:
    """What a module gave: Findings from a NIfTI label map, or checked DICOM files to send."""

    findings: Findings | None = None
    dicom: list[Path] = field(default_factory=list)  # a checked SEG first, then pass-through objects
    seconds: float = 0.0


class CommandPipeline:
    """A ``kind: command`` pipeline: name, version and domain from its configuration."""

    def __init__(self, name: str, spec: PipelineSpec, work_root: Path | None = None) -> None:
        if not spec.command:
            raise ValueError(f"pipelines.{name}: kind command needs a command")
        if spec.domain is None:
            raise ValueError(f"pipelines.{name}: kind command needs a domain (at least its modality), which the gate holds "
                             "every series against")
        self.spec = spec
        self.name = spec.name or name
        self.version = spec.version
        self.domain = Domain.model_validate(spec.domain)
        self.work_root = work_root

    @property
    def weights_digest(self) -> str:
        """The node cannot see inside a module: the digest of what it runs (command, image,
        version); a module that changes its weights under the same image tag is not noticed."""
        return rules_digest(self.spec.model_dump(mode="json"))

    def run_series(self, source: SeriesVolume, files: list[Path], job_key: str, keep: Path,
                   priors: list[tuple[str, str, list[Path]]] | None = None) -> CommandOutput:
        """Run the module on the series; its DICOM results are moved into ``keep`` (as
        ``module-N.dcm``, the checked SEG first) before the work folder goes. ``priors``:
        (Study Instance UID, StudyDate, files) of earlier studies of the patient, newest first,
        each put in a folder of its own under ``DICOM_NODE_PRIORS_DIR`` and listed in task.json."""
        if self.work_root is not None:
            self.work_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="module-", dir=self.work_root))
        try:
            inputs, outputs = work / "in", work / "out"
            inputs.mkdir()
            outputs.mkdir()
            for number, path in enumerate(files):
                _link_or_copy(path, inputs / f"{number:06d}.dcm")
            task = self.task(source, job_key)
            listed = []
            for rank, (study_uid, study_date, prior_files) in enumerate(priors or [], start=1):
                folder = work / "priors" / str(rank)
                folder.mkdir(parents=True)
                for number, path in enumerate(prior_files):
                    _link_or_copy(path, folder / f"{number:06d}.dcm")
                listed.append({"rank": rank, "study_uid": study_uid, "study_date": study_date, "folder": str(folder),
                               "files": len(prior_files)})
            task["priors"] = listed
            (inputs / "task.json").write_text(json.dumps(task, indent=2))
            started = time.perf_counter()
            self._execute(inputs, outputs, work / "priors" if listed else None)
            output = self.collect(outputs, source)
            output.seconds = time.perf_counter() - started
            keep.mkdir(parents=True, exist_ok=True)
            kept = []
            for number, path in enumerate(output.dicom):
                target = keep / f"module-{number}.dcm"
                partial = target.with_name(target.name + ".part")
                shutil.copyfile(path, partial)
                os.replace(partial, target)
                kept.append(target)
            output.dicom = kept
            return output
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def task(self, source: SeriesVolume, job_key: str) -> dict[str, Any]:
        """mercure's task.json, the parts a module reads: id, what to process, its settings."""
        first = source.datasets[0]
        return {"id": job_key,
                "info": {"uid": str(first.SeriesInstanceUID), "uid_type": "series", "action": "process",
                         "applied_rule": self.name, "mrn": str(first.get("PatientID", "")),
                         "acc": str(first.get("AccessionNumber", ""))},
                "process": {"module_name": self.name, "module_config": {"version": self.version},
                            "settings": dict(self.spec.settings)}}

    def _execute(self, inputs: Path, outputs: Path, priors: Path | None = None) -> None:
        argv = [part.replace("{in}", str(inputs)).replace("{out}", str(outputs))
                .replace("{priors}", str(priors or "")) for part in self.spec.command]
        env = {**os.environ, "MERCURE_IN_DIR": str(inputs), "MERCURE_OUT_DIR": str(outputs),
               "MONAI_INPUTPATH": str(inputs), "MONAI_OUTPUTPATH": str(outputs)}
        if priors is not None:
            env["DICOM_NODE_PRIORS_DIR"] = str(priors)
        with tempfile.TemporaryFile() as stderr:
            try:
                process = subprocess.Popen(argv, env=env, cwd=inputs.parent, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
            except OSError as exc:
                raise CommandFailed(f"{self.name}: cannot start {argv[0]!r}: {exc.strerror or exc}") from None
            try:
                code = process.wait(timeout=self.spec.timeout_seconds)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                raise CommandFailed(f"{self.name}: timed out after {self.spec.timeout_seconds:g} s; "
                                    f"stderr: {_tail(stderr)}") from None
            if code != 0:
                raise CommandFailed(f"{self.name}: exit status {code}; stderr: {_tail(stderr)}")

    def collect(self, outputs: Path, source: SeriesVolume) -> CommandOutput:
        files = sorted(p for p in outputs.rglob("*") if p.is_file())
        niftis = [p for p in files if p.name.endswith((".nii", ".nii.gz"))]
        dicoms: list[tuple[Path, Dataset]] = []
        for path in files:
            if path in niftis or path.name.endswith(".json"):
                continue
            try:
                dicoms.append((path, dcmread(path, stop_before_pixels=False)))
            except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
                raise CommandOutputError(f"{self.name} wrote {path.name}, which is not a DICOM file: {exc}") from None
        segs = [(p, ds) for p, ds in dicoms if str(ds.get("SOPClassUID", "")) == SEGMENTATION_STORAGE]
        if len(niftis) + len(segs) > 1:
            raise CommandOutputError(f"{self.name} wrote {len(niftis) + len(segs)} segmentations; one is expected")
        for path, ds in dicoms:
            if str(ds.get("StudyInstanceUID", "")) != str(source.datasets[0].StudyInstanceUID):
                raise CommandOutputError(f"{self.name} wrote {path.name}, which belongs to another study")
        if segs:
            check_segmentation(segs[0][1], source, f"{self.name}'s {segs[0][0].name}")
            others = [p for p, ds in dicoms if p != segs[0][0]]
            return CommandOutput(dicom=[segs[0][0], *others])
        if niftis:
            findings = self.findings_from_nifti(niftis[0], outputs, source)
            return CommandOutput(findings=findings, dicom=[p for p, _ in dicoms])
        if dicoms:
            return CommandOutput(dicom=[p for p, _ in dicoms])
        listed = ", ".join(p.name for p in files) or "nothing"
        raise CommandOutputError(f"{self.name} wrote no result (a DICOM SEG, a NIfTI label map or DICOM objects): {listed}")

    def findings_from_nifti(self, path: Path, outputs: Path, source: SeriesVolume) -> Findings:
        labels_file = outputs / "labels.json"
        if not labels_file.exists():
            raise CommandOutputError(f"{self.name} wrote {path.name} without labels.json beside it")
        try:
            label_map = nifti_on_grid(path, source)
            labels = self.label_infos(json.loads(labels_file.read_text()), label_map)
        except CommandOutputError:
            raise
        except (ValueError, OSError, TypeError, KeyError, AttributeError) as exc:
            raise CommandOutputError(f"{self.name} wrote {path.name} / labels.json that cannot be read: {exc}") from None
        measurements = measure_all(label_map, source.volume, labels)
        return Findings(label_map, labels, tuple(measurements), {}, {}, self.name, self.version,
                        extra={"command": " ".join(self.spec.command)})

    def label_infos(self, raw: Any, label_map: np.ndarray) -> tuple[LabelInfo, ...]:
        if not isinstance(raw, dict) or not raw:
            raise CommandOutputError(f"{self.name}: labels.json must map label values to names")
        infos = []
        for number, (key, entry) in enumerate(sorted(raw.items(), key=lambda item: int(item[0]))):
            value = int(key)
            if not 1 <= value <= 255:
                raise CommandOutputError(f"{self.name}: labels.json: label {value} outside 1-255")
            entry = {"name": entry} if isinstance(entry, str) else dict(entry)
            own = {key: tuple(entry[key]) for key in ("category", "type", "color") if entry.get(key)}
            infos.append(external_label(value, str(entry["name"]), number, self.spec.label_codes(),
                                        category=own.get("category"), kind=own.get("type"),  # type: ignore[arg-type]
                                        color=tuple(int(c) for c in own["color"]) if "color" in own else None))  # type: ignore[arg-type]
        unnamed = sorted(set(np.unique(label_map).tolist()) - {0} - {info.value for info in infos})
        if unnamed:
            raise CommandOutputError(f"{self.name}: the label map holds values {unnamed} that labels.json does not name")
        return tuple(infos)


def nifti_on_grid(path: Path, source: SeriesVolume, tolerance: float = 0.05) -> np.ndarray:
    """The NIfTI label map as a (k, j, i) uint8 array on the series' grid. Its voxels must be the
    series' voxels (any axis order and flip, as tools that save in the input's grid write them);
    a label map on another grid is refused, not resampled."""
    import nibabel as nib

    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CommandOutputError(f"{path.name}: a label map is 3-D, this one has shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer) and not np.array_equal(data, np.round(data)):
        raise CommandOutputError(f"{path.name}: a label map holds whole numbers")
    volume = source.volume
    # (i, j, k, 1) of the series -> RAS -> the NIfTI's voxel indices.
    mapping = np.linalg.inv(image.affine) @ volume.ras_affine()
    rounded = np.round(mapping[:3, :3])
    if np.abs(mapping[:3, :3] - rounded).max() > tolerance or np.abs(np.abs(rounded).sum(axis=0) - 1).max() > 0 \
            or np.abs(np.abs(rounded).sum(axis=1) - 1).max() > 0 \
            or np.abs(mapping[:3, 3] - np.round(mapping[:3, 3])).max() > tolerance:
        raise CommandOutputError(f"{path.name}: the label map is not on the series' voxel grid (resample it onto the input)")
    # ``rounded`` is a signed permutation: series axis a runs along NIfTI axis p(a), forwards or
    # backwards from offset[p(a)]. Transposes and strided slices, no index arrays (at 512 x 512 x
    # 300 an index grid would take gigabytes).
    shape_ijk = volume.shape[::-1]
    offset = np.round(mapping[:3, 3]).astype(int)
    axes = [int(np.flatnonzero(rounded[:, a])[0]) for a in range(3)]
    signs = [int(rounded[axes[a], a]) for a in range(3)]
    regions = []
    for a in range(3):
        p, n = axes[a], shape_ijk[a]
        first, last = int(offset[p]), int(offset[p]) + signs[a] * (n - 1)
        if min(first, last) < 0 or max(first, last) >= data.shape[p]:
            raise CommandOutputError(f"{path.name}: the label map (shape {data.shape}) does not cover the series")
        regions.append(slice(first, last + 1) if signs[a] > 0 else slice(first, last - 1 if last > 0 else None, -1))
    values = np.transpose(data, axes)[tuple(regions)]  # (i, j, k)
    if values.min() < 0 or values.max() > 255:
        raise CommandOutputError(f"{path.name}: label values must lie in 0-255")
    return np.ascontiguousarray(values.transpose(2, 1, 0)).astype(np.uint8)


def check_segmentation(seg: Dataset, source: SeriesVolume, what: str, tolerance_mm: float = 0.05) -> None:
    """A module's SEG must reference the series and lie on its slices (CommandOutputError)."""
    series_uid = str(source.datasets[0].SeriesInstanceUID)
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if series_uid not in referenced:
        raise CommandOutputError(f"{what} does not reference the series {series_uid} (references: {sorted(referenced) or 'none'})")
    first = source.datasets[0]
    if (int(seg.Rows), int(seg.Columns)) != (int(first.Rows), int(first.Columns)):
        raise CommandOutputError(f"{what} is {seg.Rows}x{seg.Columns}, the series {first.Rows}x{first.Columns}")
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    spacing = np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
    if np.abs(orientation - np.asarray(first.ImageOrientationPatient, dtype=float)).max() > 1e-3:
        raise CommandOutputError(f"{what}: its orientation differs from the series'")
    if np.abs(spacing - np.asarray(first.PixelSpacing, dtype=float)).max() > 1e-3:
        raise CommandOutputError(f"{what}: its pixel spacing differs from the series'")
    volume = source.volume
    slices = volume.index_to_patient(np.column_stack([np.arange(volume.shape[0]), np.zeros((volume.shape[0], 2))]))
    for number, group in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        position = np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        if np.linalg.norm(slices - position, axis=1).min() > tolerance_mm:
            raise CommandOutputError(f"{what}: frame {number} at {position.round(2).tolist()} lies on no slice of the series")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """The module and whatever it started (a shell, a container client)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _tail(stream: Any) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - STDERR_TAIL))
    text = stream.read().decode("utf-8", "replace").strip()
    return text or "(empty)"
