"""Reading the configuration: which file (``--config``, ``$DICOM_NODE_CONFIG``, config/node.yaml),
the environment overrides, and errors that name the key and what is wrong."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .model import NodeConfig

#: Where the configuration comes from when no ``--config`` is given.
CONFIG_ENV_VAR = "DICOM_NODE_CONFIG"


DEFAULT_CONFIG_PATH = Path("config/node.yaml")


#: Environment variables that override the common keys (documented in README.md).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "DICOM_NODE_AE_TITLE": ("node", "ae_title"),
    "DICOM_NODE_HOST": ("node", "host"),
    "DICOM_NODE_PORT": ("node", "port"),
    "DICOM_NODE_STORAGE_PATH": ("storage", "path"),
    "DICOM_NODE_DURABILITY": ("storage", "durability"),
    "DICOM_NODE_INDEX_PATH": ("index", "path"),
    "DICOM_NODE_AUDIT_PATH": ("audit", "path"),
}


def resolve_config_path(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """``--config`` wins, then ``$DICOM_NODE_CONFIG``, then config/node.yaml."""
    if path:
        return Path(path)
    if environ.get(CONFIG_ENV_VAR):
        return Path(environ[CONFIG_ENV_VAR])
    return DEFAULT_CONFIG_PATH


def _format_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]).lstrip(".") or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against README.md)"
        got = item.get("input")
        shown = "" if item["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {key}: {message}{shown}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>", environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Validate already-loaded YAML data, applying environment overrides first."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of sections, got {type(data).__name__}")
    data = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    for var, (section, key) in ENV_OVERRIDES.items():
        if environ and var in environ:
            target = data.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{source}: {section}: expected a mapping, got {type(target).__name__}")
            target[key] = environ[var]
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None,
                missing_hint: str | None = None) -> NodeConfig:
    """Read and validate the configuration file; ConfigError says what to fix (``missing_hint``:
    what to tell a user who has no file yet)."""
    env = os.environ if environ is None else environ
    config_path = resolve_config_path(path, env)
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = missing_hint or f"use --config PATH or ${CONFIG_ENV_VAR}"
        raise ConfigError(f"{config_path}: configuration file not found ({hint})") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read configuration file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{config_path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(config_path), env)
