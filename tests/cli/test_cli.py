"""``dicom-node`` as an operator runs it: real subprocesses, real peers, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from dicom_node.config import NodeConfig
from dicom_node.service.node import Node
from dicom_node.tools.synthetic import write_ct_series

from ..conftest import free_port
from ..support import processes

CLI = [sys.executable, "-m", "dicom_node.cli"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return processes.run([*CLI, *args], timeout=timeout)


@pytest.fixture
def target(make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node]) -> Node:
    """A node that knows the CLI's AE title as a caller."""
    return start_node(make_config(peers=[{"name": "cli", "ae_title": "CLI_NODE", "host": "127.0.0.1", "port": 1}]))


@pytest.fixture
def cli_config(tmp_path: Path, target: Node) -> Path:
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump({
        "node": {"ae_title": "CLI_NODE", "port": 0},
        "index": {"path": str(target.config.index.path)},
        "peers": [
            {"name": "target", "ae_title": "AI_NODE", "host": "127.0.0.1", "port": target.port},
            {"name": "down", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()},
            {"name": "sender_only", "ae_title": "MODALITY", "host": "127.0.0.1", "port": 104, "receive": False},
        ],
    }))
    return path


def test_echo_success_and_unreachable(cli_config: Path) -> None:
    ok = run_cli("--config", str(cli_config), "echo", "target")
    assert ok.returncode == 0, ok.stderr
    assert "C-ECHO target (AI_NODE@127.0.0.1" in ok.stdout
    down = run_cli("--config", str(cli_config), "echo", "down")
    assert down.returncode == 3
    assert down.stderr.strip().startswith("error: cannot reach down")
    assert len(down.stderr.strip().splitlines()) == 1


def test_send_folder_then_status(cli_config: Path, target: Node, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "study", 20, 32, 32)
    sent = run_cli("--config", str(cli_config), "send", str(tmp_path / "study"), "--to", "target")
    assert sent.returncode == 0, sent.stderr
    assert "20 of 20 sent to target" in sent.stdout
    assert target.index.studies()[0]["series"][0]["instance_count"] == len(files)

    status = run_cli("--config", str(cli_config), "status", "--json")
    assert status.returncode == 0
    [study] = json.loads(status.stdout)["studies"]
    assert study["series"][0]["instance_count"] == 20
    assert study["patient_id"] == "SYNTH001"
    table = run_cli("--config", str(cli_config), "status")
    assert table.returncode == 0 and "SYNTH001" in table.stdout


def test_send_reports_each_failed_instance(cli_config: Path, target: Node, tmp_path: Path) -> None:
    write_ct_series(tmp_path / "mixed", 3, 32, 32)
    (tmp_path / "mixed" / "notes.txt").write_text("not dicom")
    result = run_cli("--config", str(cli_config), "send", str(tmp_path / "mixed"), "--to", "target")
    assert result.returncode == 1
    assert "3 of 4 sent to target" in result.stdout
    assert "notes.txt" in result.stderr and "not a DICOM Part 10 file" in result.stderr


def test_send_to_unreachable_peer(cli_config: Path, tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s", 2, 32, 32)
    result = run_cli("--config", str(cli_config), "send", str(tmp_path / "s"), "--to", "down")
    assert result.returncode == 3
    assert "0 of 2 sent" in result.stdout


def test_usage_errors_exit_2_with_one_line(cli_config: Path, tmp_path: Path) -> None:
    unknown = run_cli("--config", str(cli_config), "echo", "nobody")
    assert unknown.returncode == 2 and "no peer named 'nobody' (known: target, down, sender_only)" in unknown.stderr
    refused = run_cli("--config", str(cli_config), "send", str(tmp_path), "--to", "sender_only")
    assert refused.returncode == 2 and "receive: false" in refused.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: {port: 99999}\n")
    result = run_cli("--config", str(bad), "status")
    assert result.returncode == 2
    assert "node.port: Input should be less than or equal to 65535 (got 99999)" in result.stderr


def test_config_from_environment_variable(cli_config: Path) -> None:
    import os

    result = processes.run([*CLI, "echo", "target"], timeout=60,
                            env={**os.environ, "DICOM_NODE_CONFIG": str(cli_config)})
    assert result.returncode == 0, result.stderr


def test_serve_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: {durability: maybe}\n")
    result = run_cli("--config", str(bad), "serve", timeout=60)
    assert result.returncode == 2
    assert "storage.durability: Input should be 'fsync' or 'none'" in result.stderr


def test_config_is_accepted_after_every_command() -> None:
    """`dicom-node serve --config node.yaml` as much as `dicom-node --config node.yaml serve`."""
    from dicom_node.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    required = {"echo": ["pacs"], "send": ["x.dcm", "--to", "pacs"], "init": [], "audit": ["verify"],
                "deidentify": ["in", "out", "--profile", "research"], "find": ["--on", "pacs"],
                "retrieve": ["1.2.3", "--from", "pacs"], "train": ["--from-corrections", "--base", "ct-organs"]}
    assert {"serve", "echo", "send", "status", "jobs", "worker", "demo", "models", "init", "routes", "audit",
            "deidentify", "find", "retrieve", "requests", "train"} <= set(commands)
    for command in commands:
        after = parser.parse_args([command, *required.get(command, []), "--config", "after.yaml"])
        assert after.config == Path("after.yaml"), command
        before = parser.parse_args(["--config", "before.yaml", command, *required.get(command, [])])
        assert before.config == Path("before.yaml"), command
        both = parser.parse_args(["--config", "before.yaml", command, *required.get(command, []), "--config", "after.yaml"])
        assert both.config == Path("after.yaml"), command
    for action in (["versions"], ["promote", "ct-organs"], ["rollback", "ct-organs"]):  # models' own commands
        assert parser.parse_args(["models", *action, "--config", "after.yaml"]).config == Path("after.yaml"), action


def test_status_with_config_after_the_command(cli_config: Path) -> None:
    done = run_cli("status", "--config", str(cli_config))
    assert done.returncode == 0, done.stderr


def test_a_new_user_in_an_empty_folder(tmp_path: Path) -> None:
    """No configuration file: serve says how to get one (exit 2, one line); `init` writes the
    commented default; serve then starts on it and says first which file it uses."""
    import os
    import signal

    env = {k: v for k, v in os.environ.items() if k != "DICOM_NODE_CONFIG"}
    missing = processes.run([*CLI, "serve"], timeout=60, cwd=tmp_path, env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: configuration: config/node.yaml: configuration file not found (`dicom-node init` writes the "
        "commented default there; or give --config PATH / $DICOM_NODE_CONFIG)"]
    init = processes.run([*CLI, "init"], timeout=60, cwd=tmp_path, env=env)
    assert init.returncode == 0, init.stderr
    written = tmp_path / "config" / "node.yaml"
    assert written.read_text() == (Path(__file__).parents[2] / "config" / "node.yaml").read_text()
    again = processes.run([*CLI, "init"], timeout=60, cwd=tmp_path, env=env)
    assert again.returncode == 2 and "not overwriting" in again.stderr
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*CLI, "serve"], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**env, "DICOM_NODE_PORT": str(port)})
    processes.watch(proc, log=log, name="dicom-node serve")
    try:
        from ..support.peers import wait_for_port

        wait_for_port(port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    lines = log.read_text().splitlines()
    assert lines[0] == f"configuration: {written.resolve()}"
    assert proc.returncode == 0
    assert "Traceback" not in log.read_text() and "unclean shutdown" not in log.read_text()
    assert (tmp_path / "var" / "index.sqlite").exists()
