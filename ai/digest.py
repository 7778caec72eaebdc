"""What an algorithm's behaviour is made of, as one SHA-256: its weights files, or for a
rule-based pipeline its rules. Result objects derive the algorithm's Device UID from it (IHE AI
Results: the UID changes whenever the weights do), so a PACS can tell two models' results apart
even when someone forgot to change the version string."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_cache: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def file_digest(path: Path) -> str:
    """SHA-256 of one file, remembered while its size and modification time stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _cache:
            return _cache[key]
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    with _lock:
        _cache[key] = sha.hexdigest()
    return _cache[key]


def files_digest(paths: Iterable[Path]) -> str:
    """One digest over several weights files (nnU-Net's folds), in the order given."""
    return hashlib.sha256("\n".join(file_digest(Path(p)) for p in paths).encode()).hexdigest()


def rules_digest(rules: Mapping[str, Any]) -> str:
    """The digest of a rule-based algorithm's parameters (its "weights")."""
    return hashlib.sha256(json.dumps(rules, sort_keys=True, default=str).encode()).hexdigest()
