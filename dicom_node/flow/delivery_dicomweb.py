"""Delivering an outbox group to a DICOMweb peer by STOW-RS (the Sender's other way out).

The group (one job's results, or one forwarded series version, for one peer) goes in
multipart/related requests of at most ``dicomweb.max_batch_bytes`` each, in the first variant
every object of the group has (the peer's ``seg_encodings`` order; over HTTP no negotiation
narrows it). Each instance's fate comes from the answer (client.py): stored, delivered;
refused by the archive, dead at once with its Failure Reason (sending it again cannot help);
the whole request failed, every instance of it retried with backoff, or dead at once for a 4xx
that will not change (bad credentials, a request the archive refuses).
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

import pydicom
from pydicom.dataset import Dataset

from ..config import Peer
from ..dicomweb.client import DicomwebPeerClient
from ..errors import ConfigError, DeidentificationError, PeerError, TranscodeError
from .outbox import Candidate, Delivery


class Sender(Protocol):
    """What this module needs of delivery.Sender (which calls it): mark rows, build payloads."""

    def fail(self, group: list[Delivery], reason: str, permanent: bool = False) -> None: ...

    def mark_delivered(self, delivery: Delivery, candidate: Candidate, peer: Peer, status: int) -> None: ...

    def payload(self, candidate: Candidate) -> str | Dataset: ...


log = logging.getLogger(__name__)

#: What a refused or failed STOW-RS reports as status in the audit record (success).
_STORED = 0x0000


def _batches(items: list[tuple[Delivery, Candidate]], cap: int) -> list[list[tuple[Delivery, Candidate]]]:
    """Consecutive runs of at most ``cap`` bytes (an instance over the cap goes alone)."""
    batches: list[list[tuple[Delivery, Candidate]]] = [[]]
    size = 0
    for item in items:
        try:
            length = os.path.getsize(item[1].path)
        except OSError:
            length = 0
        if batches[-1] and size + length > cap:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += length
    return [b for b in batches if b]


def send_group_by_stow(sender: Sender, peer: Peer, group: list[Delivery]) -> int:
    """STOW-RS one outbox group to ``peer``; return how many deliveries were done."""
    assert peer.dicomweb is not None
    variants = [c.variant for c in group[0].candidates]
    variant = next((v for v in variants if all(any(c.variant == v for c in d.candidates) for d in group)), None)
    if variant is None:
        sender.fail(group, f"{peer.name}: no encoding common to every object of {group[0].job_key}", permanent=True)
        return 0
    chosen = [(d, next(c for c in d.candidates if c.variant == variant)) for d in group]
    try:
        client = DicomwebPeerClient(peer)
    except PeerError as exc:
        sender.fail(group, str(exc))
        return 0
    delivered = 0
    try:
        for batch in _batches(chosen, peer.dicomweb.max_batch_bytes):
            datasets: list[Dataset] = []
            ready: list[tuple[Delivery, Candidate]] = []
            for delivery, candidate in batch:
                try:
                    payload = sender.payload(candidate)
                    datasets.append(payload if isinstance(payload, Dataset) else pydicom.dcmread(payload))
                    ready.append((delivery, candidate))
                except (TranscodeError, DeidentificationError, ConfigError, OSError,
                        pydicom.errors.InvalidDicomError) as exc:
                    sender.fail([delivery], f"cannot prepare {delivery.object}: {exc}")
            if not datasets:
                continue
            answer = client.store(datasets)
            if answer.error:
                sender.fail([d for d, _ in ready], answer.error, permanent=not answer.retriable)
                continue
            for (delivery, candidate), ds in zip(ready, datasets, strict=True):
                uid = str(ds.SOPInstanceUID)
                if uid in answer.stored:
                    sender.mark_delivered(delivery, candidate, peer, _STORED)
                    delivered += 1
                else:
                    sender.fail([delivery], answer.refused.get(uid, f"{peer.name} did not say it stored {uid}"),
                                 permanent=uid in answer.refused)
    finally:
        client.close()
    return delivered
