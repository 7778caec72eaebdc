"""The ``sources`` list: archives that cannot push, polled for new studies (flow/polling.py)."""

from __future__ import annotations

from pydantic import Field

from .base import _Section


class PollSource(_Section):
    """Every ``interval_seconds``, ask ``peer`` (a peer with ``query: true``; QIDO-RS for a
    DICOMweb peer, C-FIND otherwise) for the studies matching ``query`` (DICOM keyword -> value)
    of the last ``lookback_days`` (a StudyDate range, unless the query gives StudyDate), and
    retrieve each study not seen before; then ``route`` runs on it, or, without one, the rules
    decide as for any study that arrives (the peer is its source)."""

    peer: str
    query: dict[str, str] = {}
    interval_seconds: float = Field(300.0, ge=5)
    lookback_days: float = Field(1.0, gt=0)
    route: str | None = None
