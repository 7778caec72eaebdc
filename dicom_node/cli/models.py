"""``models``: the model cards the node knows and the pipelines that use them."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from ..config import NodeConfig
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, optional_config


def cmd_models(config: NodeConfig | None, args: argparse.Namespace) -> int:
    from ai.registry import ModelCardError, ModelRegistry

    from ..pipelines.build import describe

    config = optional_config(args.config)
    try:
        cards = ModelRegistry(list(args.models_dir or [])).cards()
    except ModelCardError as exc:
        return fail(EXIT_USAGE, str(exc))
    pipelines = [describe(name, spec) for name, spec in config.pipelines.items()] if config else []
    checks: dict[str, str] = {}
    if args.check:
        from ..tools.model_check import check_pipeline

        for name, spec in (config.pipelines.items() if config else []):
            checks[name] = check_pipeline(name, spec)
        for row in pipelines:
            row["check"] = checks[row["pipeline"]]
    if args.json:
        json.dump({"pipelines": pipelines,
                   "installed": [{"name": c.name, "version": c.version, "task": c.data.task, "modality": c.data.modality,
                                  "format": c.data.format, "weights": str(c.weights_path),
                                  "weights_present": c.weights_path.exists(), "labels": [l.name for l in c.data.labels],
                                  "limitations": c.data.limitations.strip()} for c in cards]},
                  sys.stdout, indent=2)
        print()
    else:
        console = Console() if sys.stdout.isatty() else Console(width=200)
        if config is not None:
            table = Table(title="Configured pipelines")
            for column in ("pipeline", "kind", "model", "format", "labels", "source", *(["check"] if args.check else [])):
                table.add_column(column)
            for row in pipelines:
                model = f"{row['model']} {row['version']}".strip() if "error" not in row else f"[red]{row['error']}[/]"
                table.add_row(row["pipeline"], row["kind"], model, row["format"], ", ".join(row["labels"]), row["source"],
                              *([row["check"]] if args.check else []))
            console.print(table)
        table = Table(title="Installed models")
        for column in ("name", "version", "task", "modality", "labels", "weights"):
            table.add_column(column)
        for card in cards:
            table.add_row(card.name, card.version, card.data.task, card.data.modality, ", ".join(l.name for l in card.data.labels),
                          card.data.format if card.weights_path.exists() else f"[red]missing {card.data.weights}[/]")
        console.print(table)
    failed = [name for name, outcome in checks.items() if not outcome.startswith("ok")]
    if failed:
        return fail(EXIT_FAILED, f"pipeline(s) failed the check: {', '.join(failed)}")
    return EXIT_OK
