"""``deidentify``: a folder of DICOM files de-identified with a configured profile."""

from __future__ import annotations

import argparse

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..config import NodeConfig
from ..privacy.deidentify import deidentifier_for
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, err, fail


def cmd_deidentify(config: NodeConfig, args: argparse.Namespace) -> int:
    from ..net.scu import iter_dicom_candidates
    from ..privacy.export import check_folders, export

    if not args.source.is_dir():
        return fail(EXIT_USAGE, f"deidentify: IN {args.source} is not a folder")
    try:
        check_folders(args.source, args.target)
    except ValueError as exc:
        return fail(EXIT_USAGE, f"deidentify: {exc}")
    engine = deidentifier_for(config.deidentification, args.profile)
    files = list(iter_dicom_candidates([args.source]))
    with Progress(TextColumn("de-identifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("files", total=len(files))
        summary = export(files, args.target, engine, lambda _: progress.advance(task))
    print(f"{summary.written} instance(s) de-identified by profile {args.profile} into {args.target}")
    for reason, count in summary.held.most_common():
        print(f"held back: {count} instance(s): {reason}")
    for path, reason in summary.unreadable[:20]:
        print(f"not DICOM or unreadable: {path}: {reason}")
    if len(summary.unreadable) > 20:
        print(f"... and {len(summary.unreadable) - 20} more not DICOM or unreadable")
    actions = ", ".join(f"{code} {n}" for code, n in sorted(summary.actions.items()))
    if actions:
        print(f"actions (PS3.15 Table E.1-1 codes): {actions}")
    return EXIT_OK if summary.written or not files else EXIT_FAILED
