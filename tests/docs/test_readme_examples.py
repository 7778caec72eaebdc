"""The README's examples work as written: every YAML block, pasted into the shipped configuration
(its sections replacing the shipped ones, as a paste into config/node.yaml would), is a valid
configuration; every `dicom-node` command line in it parses with the CLI's own parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicom_node.cli.main import build_parser
from dicom_node.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SHIPPED = yaml.safe_load((ROOT / "config" / "node.yaml").read_text())
#: Sections whose entries a pasted block adds to (a mapping by name); the others it replaces.
MERGED = {"pipelines", "node", "web", "storage", "index", "audit", "results", "jobs", "delivery", "completion"}


def _blocks(language: str) -> list[tuple[int, str]]:
    found = []
    for match in re.finditer(r"^```" + language + r"\n(.*?)^```", README, flags=re.S | re.M):
        found.append((README[:match.start()].count("\n") + 1, match.group(1)))
    return found


YAML_BLOCKS = _blocks("yaml")


def _pasted(fragment: dict[str, Any]) -> dict[str, Any]:
    config = {key: (dict(value) if isinstance(value, dict) else value) for key, value in SHIPPED.items()}
    for key, value in fragment.items():
        if key in MERGED and isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def test_the_readme_has_examples() -> None:
    assert len(YAML_BLOCKS) >= 9
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize(("line", "text"), YAML_BLOCKS, ids=[f"line{n}" for n, _ in YAML_BLOCKS])
def test_each_yaml_example_is_a_valid_configuration(line: int, text: str) -> None:
    fragment = yaml.safe_load(text)
    assert isinstance(fragment, dict), f"README line {line}: not a mapping of sections"
    parse_config(_pasted(fragment), f"README.md line {line}")


def _commands() -> list[tuple[int, list[str]]]:
    """Every `dicom-node ...` in the README's code blocks and inline code, as argv after the program."""
    found: list[tuple[int, list[str]]] = []
    for number, raw in enumerate(README.splitlines(), start=1):
        for part in re.split(r"&&|`", raw):
            part = part.strip()
            match = re.match(r"^(?:\.venv/bin/)?dicom-node(\s.*)?$", part)
            if match is None:
                continue
            words = shlex.split(part.split(" #")[0], comments=False)[1:]
            if not words or any(w.startswith(("<", "[")) or "|" in w or w == "..." for w in words):
                continue  # the program's name alone, or a usage line with placeholders or alternatives
            found.append((number, words))
    return found


COMMANDS = _commands()


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[f"line{n}-{'_'.join(a[:2])}" for n, a in COMMANDS])
def test_each_command_line_parses(line: int, argv: list[str]) -> None:
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README line {line}: `dicom-node {' '.join(argv)}` does not parse (exit {exc.code})")
