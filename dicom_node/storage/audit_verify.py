"""``dicom-node audit verify``: walk the chain, check every checkpoint's signature and numbering and
the file's end against the anchor, and name the records written after the last checkpoint (the
ones a cut could have removed unseen)."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit_chain import CHECKPOINT, GENESIS, TAMPERED, Anchor, anchor_path, checkpoint_mac, line_hash, read_audit, read_locked


@dataclass(frozen=True)
class Break:
    line: int
    problem: str


def verify(path: Path, key: bytes | None = None) -> tuple[int, list[Break]]:
    """(records checked, breaks): each record's ``prev`` must be the hash of the line before it
    and its ``seq`` one more. Records written before the chain existed (no ``seq``) at the
    start of the file are counted, not checked. Checkpoints must be numbered one after another
    and, given the ``key``, carry a valid signature; the end of the file must be where the
    anchor (``<file>.anchor``, when there is one) says the node left it; and every Security
    Alert the node recorded about the trail itself is reported."""
    breaks: list[Break] = []
    prev_hash, prev_seq, checked = GENESIS, 0, 0
    chained = False
    anchor, anchor_problem = Anchor.read(anchor_path(path), key)
    last_checkpoint = 0
    anchor_line: tuple[int, str] | None = None  # (line number, hash) of the record at the anchor's seq
    number = 0
    for number, line in enumerate(read_locked(path).splitlines(), start=1):
        if not line.strip():
            breaks.append(Break(number, "an empty line"))
            continue
        try:
            record = json.loads(line)
        except ValueError:
            breaks.append(Break(number, "not a JSON record (changed or cut)"))
            prev_hash = line_hash(line)
            continue
        checked += 1
        if "seq" not in record and not chained:
            prev_hash = line_hash(line)
            continue
        chained = True
        if record.get("prev") != prev_hash:
            breaks.append(Break(number, f"line {number - 1} was changed, or lines before this one were removed "
                                        "(its hash does not match this record's prev)"))
        seq = record.get("seq")
        if isinstance(seq, int) and prev_seq and seq != prev_seq + 1:
            if seq > prev_seq + 1:
                breaks.append(Break(number, f"{seq - prev_seq - 1} record(s) missing before this one (seq {prev_seq} "
                                            f"then {seq})"))
            else:
                breaks.append(Break(number, f"seq {seq} after {prev_seq}: a record inserted or repeated"))
        if record.get("event") == CHECKPOINT:
            breaks.extend(Break(number, problem) for problem in _checkpoint_problems(record, last_checkpoint, key))
            last_checkpoint = record.get("checkpoint", last_checkpoint) if isinstance(record.get("checkpoint"), int) \
                else last_checkpoint
        elif record.get("event") == "security_alert" and record.get("alert") == TAMPERED:
            breaks.append(Break(number, f"the node found the trail tampered with: {record.get('description')}"))
        prev_hash, prev_seq = line_hash(line), seq if isinstance(seq, int) else prev_seq
        if anchor is not None and seq == anchor.seq:
            anchor_line = (number, prev_hash)
    end = number + 1
    if anchor_problem:
        breaks.append(Break(end, anchor_problem))
    elif anchor is None:
        if last_checkpoint:
            breaks.append(Break(end, f"the anchor {anchor_path(path)} is missing: the end of the trail cannot be checked "
                                     f"past checkpoint {last_checkpoint}"))
    else:
        if prev_seq < anchor.seq:
            breaks.append(Break(end, f"{anchor.seq - prev_seq} record(s) missing at the end: the file ends at seq "
                                     f"{prev_seq}, the node wrote up to seq {anchor.seq}"))
        elif anchor_line is not None and anchor_line[1] != anchor.hash:
            breaks.append(Break(anchor_line[0], f"record seq {anchor.seq} was changed after the node wrote it (it "
                                                "differs from the anchor)"))
        if prev_seq > anchor.seq:
            breaks.append(Break(end, f"{prev_seq - anchor.seq} record(s) after seq {anchor.seq} were not written by the "
                                     "node (they are not in the anchor)"))
        if anchor.checkpoint != last_checkpoint and prev_seq >= anchor.seq:
            breaks.append(Break(end, f"the last checkpoint in the file is {last_checkpoint}, the node wrote "
                                     f"checkpoint {anchor.checkpoint}: checkpoints removed"))
    return checked, breaks


def _checkpoint_problems(record: dict[str, Any], last: int, key: bytes | None) -> list[str]:
    number = record.get("checkpoint")
    if not isinstance(number, int):
        return ["a checkpoint without its number"]
    problems = []
    if number != last + 1:
        problems.append(f"checkpoint {number} follows checkpoint {last}: "
                        + (f"checkpoint(s) {last + 1}-{number - 1} removed" if number > last + 1 else "repeated"))
    if key is not None and not hmac.compare_digest(str(record.get("mac")), checkpoint_mac(
            key, number, int(record.get("seq", 0)), str(record.get("prev")))):
        problems.append(f"checkpoint {number}'s signature does not match: the records before it were changed and "
                        "chained again, or the checkpoint is forged")
    return problems


def records_after_last_checkpoint(path: Path) -> int:
    """How many records the file holds after its last checkpoint (not yet covered by a signature)."""
    records = read_audit(path)
    last = max((n for n, r in enumerate(records) if r.get("event") == CHECKPOINT), default=-1)
    return len(records) - last - 1
