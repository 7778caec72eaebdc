"""Owner-only files: patients' names live in the index, the audit trail and every result, so
nothing the node writes may be readable by other accounts on the machine.

``restrict_new_files`` sets the process umask to 077 before anything is written (child
processes inherit it), which covers what other libraries create too: SQLite's -wal and -shm
files, PostgreSQL's throwaway clusters, pydicom's and highdicom's outputs. ``readable_secrets``
names the configured secret files (TLS private key, web token, pseudonym key, audit key) that
other accounts can read: ``serve`` warns about each at start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from .audit_chain import default_key_path

OWNER_ONLY_UMASK = 0o077


def restrict_new_files() -> int:
    """Make every file and folder this process (and its children) creates owner-only; return the
    umask it replaced."""
    return os.umask(OWNER_ONLY_UMASK)


def secret_files(config: Any) -> dict[str, Path]:
    """The configuration's secret files by key, as far as they are set."""
    found: dict[str, Path | None] = {
        "node.tls.private_key": config.node.tls.private_key if config.node.tls is not None else None,
        "web.token_file": config.web.token_file,
        "deidentification.key_file": config.deidentification.key_file,
        "audit.key_file": config.audit.key_file or default_key_path(config.audit.path),
    }
    return {key: path for key, path in found.items() if path is not None}


def readable_secrets(config: Any) -> list[str]:
    """One sentence per secret file that accounts other than its owner can read (group or other
    bits), naming the key and the mode."""
    problems = []
    for key, path in secret_files(config).items():
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue  # a missing file is the configuration check's to report
        if mode & 0o077:
            problems.append(f"{key} {path} is readable by other accounts (mode {mode:04o}): chmod 600 it")
    return problems
