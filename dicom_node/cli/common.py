"""What every command shares: exit codes, the error line on stderr, logging set-up, the client
TLS context and the configuration a command may run without."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import NodeConfig, load_config, resolve_config_path

EXIT_OK = 0


EXIT_FAILED = 1


EXIT_USAGE = 2


EXIT_PEER = 3


err = Console(stderr=True, soft_wrap=True)


def fail(code: int, message: str) -> int:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return code


def setup_command_logging(verbose: bool, config: NodeConfig | None = None) -> None:
    from ..logs import setup_logging

    setup_logging(verbose, json_lines=config is not None and config.logs.format == "json")


def client_tls(config: NodeConfig) -> Any:
    """The node's TLS client context for peers with tls: true (None without node.tls)."""
    from ..net.tls import client_context

    return client_context(config.node.tls) if config.node.tls is not None else None


def optional_config(path: Path | None) -> NodeConfig | None:
    """The configuration when there is one (``models`` works without it)."""
    import os

    if path is None and not resolve_config_path(None, os.environ).exists():
        return None
    return load_config(path, missing_hint=MISSING_HINT)


CONFIG_HELP = "configuration file (default: $DICOM_NODE_CONFIG, else config/node.yaml)"


MISSING_HINT = "`dicom-node init` writes the commented default there; or give --config PATH / $DICOM_NODE_CONFIG"
