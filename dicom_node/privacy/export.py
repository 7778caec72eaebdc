"""``dicom-node deidentify IN OUT --profile NAME``: the node's de-identification engine, folder
to folder, for exporting training or research data.

Every DICOM file under IN is read, checked against the profile's burned-in policy, de-identified
and written to OUT as ``<study>/<series>/<instance>.dcm`` named by the pseudonymous UIDs (so the
layout itself says nothing about the patient). A file that is not DICOM, or that the profile
holds back, is not written; the summary counts each reason. IN is never written to.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from ..errors import InvalidInstanceError
from ..storage.header import checked_uid
from ..storage.store import make_durable_dirs, write_dataset_atomically
from .deidentify import Deidentifier

log = logging.getLogger(__name__)


@dataclass
class ExportSummary:
    written: int = 0
    #: Reason -> how many instances were held back for it.
    held: Counter[str] = field(default_factory=Counter)
    #: Files that are not DICOM (or cannot be read), with why.
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    #: Actions taken over all instances, by code (X, Z, D, U, K, C).
    actions: Counter[str] = field(default_factory=Counter)


def check_folders(source: Path, target: Path) -> None:
    """Refuse an OUT that is IN or inside it (the export would read its own output)."""
    source, target = source.resolve(), target.resolve()
    if target == source or source in target.parents:
        raise ValueError(f"OUT {target} is inside IN {source}: give a folder outside it")


def export(files: Iterable[Path], target: Path, engine: Deidentifier,
           progress: Callable[[Path], None] = lambda _: None) -> ExportSummary:
    summary = ExportSummary()
    made: set[Path] = set()  # series folders already made durable
    for path in files:
        try:
            ds = dcmread(path)
            uids = [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError) as exc:
            summary.unreadable.append((path, f"{type(exc).__name__}: {exc}"))
            progress(path)
            continue
        held = engine.check(ds)
        if held is not None:
            summary.held[held.reason] += 1
            log.info("%s held back: %s", path, held.reason)
            progress(path)
            continue
        report = engine.apply(ds)
        summary.actions.update(report.actions)
        try:  # a UID the profile keeps names a path as it is: refused unless it is a UID
            study, series, instance = (checked_uid(report.uids.get(u, u)) for u in uids)
        except InvalidInstanceError as exc:
            summary.unreadable.append((path, str(exc)))
            progress(path)
            continue
        out = target / study / series / f"{instance}.dcm"
        if out.parent not in made:
            make_durable_dirs(out.parent)
            made.add(out.parent)
        write_dataset_atomically(ds, out)
        summary.written += 1
        progress(path)
    return summary
