"""Everything the node writes is owner-only, whatever the umask it was started with, and ``serve``
warns about secret files other accounts can read (file_modes.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pydicom
import yaml

from dicom_node.config import parse_config
from dicom_node.process import stop_process
from dicom_node.storage.file_modes import readable_secrets
from dicom_node.tools.synthetic import write_volume_series

from ..conftest import TEST_SCU, config_dict
from ..net.test_storage_scp import send
from ..support import processes
from ..support.external_ai import ExternalAI
from ..support.peers import free_port, wait_for, wait_for_port


def _loose_umask() -> None:
    os.umask(0o022)  # what a distribution's default login gives: files 0644, folders 0755


def test_a_served_study_leaves_only_owner_only_files_and_folders(tmp_path: Path) -> None:
    pacs = ExternalAI("PACS")
    port, web_port = free_port(), free_port()
    token = tmp_path / "secrets" / "web.token"
    token.parent.mkdir()
    token.write_text(os.urandom(24).hex())
    token.chmod(0o644)  # readable by others: serve must say so
    var = tmp_path / "var"
    data = config_dict(
        var, node={"port": port, "workers": 1},
        peers=[{"name": "scu", "ae_title": TEST_SCU, "host": "127.0.0.1", "port": 1, "receive": False},
               {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port, "send": False}],
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline", "destinations": ["pacs"]}],
        pipelines={"baseline": {"kind": "classical"}}, results={"path": str(var / "results")},
        web={"enabled": True, "port": web_port, "token_file": str(token)},
        jobs={"workers": 1, "poll_seconds": 0.2}, delivery={"interval_seconds": 0.2, "retry_base_seconds": 0.5})
    config_path = tmp_path / "node.yaml"
    config_path.write_text(yaml.safe_dump(data))
    log = tmp_path / "node.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(config_path), "serve"],
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_loose_umask)
    processes.watch(proc, log=log, name="dicom-node serve")
    try:
        wait_for_port(port, proc)
        from ai.phantom import make_phantom

        phantom = make_phantom(7, shape=(24, 64, 64), spacing=(2.5, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
        files = write_volume_series(phantom.volume, tmp_path / "ct", seed=7)
        assert send(port, files) == [0] * len(files)
        wait_for(lambda: {d.Modality for d in pacs.received} >= {"SEG", "SR"}, 120, "SEG and SR at the PACS")
    finally:
        stop_process(proc, 30)
        pacs.stop()
    text = log.read_text()
    assert f"web.token_file {token} is readable by other accounts (mode 0644)" in text, text[-3000:]
    loose = []
    for path in [var, *var.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            loose.append(f"{path.relative_to(tmp_path)} {mode:04o}")
    assert not loose, f"readable by other accounts: {loose}\n--- node log ---\n{text[-3000:]}"
    assert any(p.name.endswith(".dcm") for p in (var / "results").rglob("*"))  # results were written there
    assert (var / "index.sqlite").exists() and (var / "audit.jsonl").exists()
    assert pydicom.dcmread(files[0], stop_before_pixels=True).Modality == "CT"


def test_readable_secrets_names_each_key_and_mode(tmp_path: Path) -> None:
    secret = tmp_path / "pseudonym.key"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o640)
    token = tmp_path / "token"
    token.write_text("x" * 40)
    token.chmod(0o600)
    config = parse_config(config_dict(tmp_path, web={"enabled": True, "port": 0, "token_file": str(token)},
                                      deidentification={"key_file": str(secret)}), Path("node.yaml"))
    assert readable_secrets(config) == [
        f"deidentification.key_file {secret} is readable by other accounts (mode 0640): chmod 600 it"]
