"""``audit``: verify the audit trail's chain, checkpoints and anchor."""

from __future__ import annotations

import argparse

from ..config import NodeConfig, load_config
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, MISSING_HINT, fail


def cmd_audit(config: NodeConfig | None, args: argparse.Namespace) -> int:
    from ..storage.audit_chain import default_key_path, load_key
    from ..storage.audit_verify import records_after_last_checkpoint, verify

    if args.path is None and config is None:
        config = load_config(args.config, missing_hint=MISSING_HINT)
    path = args.path or config.audit.path  # type: ignore[union-attr]
    if not path.exists():
        return fail(EXIT_USAGE, f"no audit file at {path}")
    key_path = (config.audit.key_file if config is not None else None) or default_key_path(path)
    key = load_key(key_path) if key_path.exists() else None
    if key is None:
        print(f"{path}: no audit key at {key_path}: checkpoint signatures not checked")
    checked, breaks = verify(path, key)
    for item in breaks:
        print(f"{path}:{item.line}: {item.problem}")
    if breaks:
        return fail(EXIT_FAILED, f"{path}: the chain is broken in {len(breaks)} place(s) of {checked} record(s)")
    print(f"{path}: {checked} record(s), the chain is whole; {records_after_last_checkpoint(path)} record(s) after "
          "the last checkpoint")
    return EXIT_OK
