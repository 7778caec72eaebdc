"""The audit trail's chain and what anchors its end outside the file (audit.py says why): each
line's hash, the HMAC key (``audit.key_file``, made owner-only at first start), the signed anchor
(``<file>.anchor``) and checkpoint signatures, and reading where the file's chain ends."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


ANCHOR_SUFFIX = ".anchor"


TAMPERED = "audit_tampered"


CHECKPOINT = "audit_checkpoint"


def anchor_path(path: Path) -> Path:
    return path.with_name(path.name + ANCHOR_SUFFIX)


def default_key_path(path: Path) -> Path:
    return path.with_name(path.name + ".key")


def load_key(path: Path, create: bool = False) -> bytes:
    """The audit key (at least 32 bytes), created owner-only with 32 random bytes when asked and absent."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process of the node made it first
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(os.urandom(32))
                out.flush()
                os.fsync(out.fileno())
    key = path.read_bytes()
    if len(key) < 32:
        raise ValueError(f"audit key {path} holds {len(key)} bytes; it needs at least 32 (head -c 32 /dev/urandom)")
    return key


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("ascii"), hashlib.sha256).hexdigest()


def checkpoint_mac(key: bytes, checkpoint: int, seq: int, prev: str) -> str:
    return sign(key, f"checkpoint|{checkpoint}|{seq}|{prev}")


@dataclass(frozen=True)
class Anchor:
    """The end of the trail as the node last wrote it, kept beside the file."""

    seq: int
    hash: str
    checkpoint: int
    checkpoint_seq: int
    checkpoint_time: float

    def signed(self, key: bytes) -> bytes:
        body = {"seq": self.seq, "hash": self.hash, "checkpoint": self.checkpoint, "checkpoint_seq": self.checkpoint_seq,
                "checkpoint_time": self.checkpoint_time}
        body["mac"] = sign(key, json.dumps(body, sort_keys=True))
        return json.dumps(body, sort_keys=True).encode("ascii")

    @staticmethod
    def read(path: Path, key: bytes | None) -> tuple[Anchor | None, str | None]:
        """(anchor, problem): (None, None) when there is no anchor file."""
        try:
            data = json.loads(path.read_bytes())
            mac = data.pop("mac")
            anchor = Anchor(int(data["seq"]), str(data["hash"]), int(data["checkpoint"]), int(data["checkpoint_seq"]),
                            float(data["checkpoint_time"]))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None, f"the anchor {path} is unreadable"
        if key is not None and not hmac.compare_digest(str(mac), sign(key, json.dumps(data, sort_keys=True))):
            return None, f"the anchor {path} is not signed by the audit key (forged or changed)"
        return anchor, None


def last_checkpoint(path: Path) -> tuple[int, int, float]:
    """(number, seq, time) of the file's last checkpoint record, (0, 0, 0.0) without one."""
    found = (0, 0, 0.0)
    marker = f'"event": "{CHECKPOINT}"'.encode()
    with open(path, "rb") as fh:
        for line in fh:
            if marker in line:
                try:
                    record = json.loads(line)
                    found = (int(record["checkpoint"]), int(record["seq"]), time.time())
                except (ValueError, KeyError, TypeError):
                    continue
    return found


def last_link(path: Path) -> tuple[str, int]:
    """(hash of the last line, its seq) of the file, (GENESIS, 0) when it is empty or its last
    line predates the chain."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        if end == 0:
            return GENESIS, 0
        size = 4096
        while True:
            start = max(0, end - size)
            fh.seek(start)
            chunk = fh.read(end - start)
            body = chunk.rstrip(b"\n")
            cut = body.rfind(b"\n")
            if cut >= 0 or start == 0:
                last = body[cut + 1:]
                break
            size *= 4
    try:
        seq = int(json.loads(last).get("seq", 0))
    except (ValueError, AttributeError):
        seq = 0
    return line_hash(last), seq


def read_locked(path: Path) -> bytes:
    """The file's bytes under a shared lock: a writer holds the exclusive one from the first byte
    of a record to its newline, so a reader never sees half a record."""
    with open(path, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        try:
            return fh.read()
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_audit(path: Path) -> list[dict[str, Any]]:
    """All records of an audit file (for tests and tooling)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in read_locked(path).decode("utf-8").splitlines() if line.strip()]
