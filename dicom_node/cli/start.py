"""``init`` (write the commented default configuration) and ``demo`` (the whole node on a phantom)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_CONFIG_PATH, NodeConfig
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, err, fail


def cmd_demo(config: NodeConfig, args: argparse.Namespace) -> int:
    from ..tools.demo import run_demo

    return run_demo(args, err)


def cmd_init(config: NodeConfig | None, args: argparse.Namespace) -> int:
    from importlib.resources import files

    target: Path = args.path
    if target.exists() and not args.force:
        return fail(EXIT_USAGE, f"{target} exists; not overwriting it (--force to replace it)")
    text = files("dicom_node.config").joinpath("default_node.yaml").read_text(encoding="utf-8")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        return fail(EXIT_FAILED, f"cannot write {target}: {exc.strerror}")
    print(f"wrote the commented default configuration to {target}")
    print("  edit node.ae_title/port and the peers that may send to the node, then:")
    hint = "" if target == DEFAULT_CONFIG_PATH else f" --config {target}"
    print(f"  dicom-node serve{hint}")
    return EXIT_OK
