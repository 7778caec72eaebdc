"""What the worker records of each inference (storage/inferences.py): built from the job, the
gate's decisions for every pipeline it held the series against, and the findings of the one
that ran. A pipeline that declined before another took the series is recorded too: a model's
acceptance rate counts every series offered to it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ai.trust.gate import GateDecision
from ai.types import Findings

from ..results.identity import Algorithm
from ..storage.inferences import Inference, Scanner
from .jobs import Job


def gate_distance(decision: GateDecision | None) -> float | None:
    value = None if decision is None else decision.measures.get("distance")
    return float(value) if isinstance(value, (int, float)) else None


def _base(job: Job, name: str, algorithm: Algorithm, scanner: Scanner, decision: GateDecision | None) -> dict[str, Any]:
    return {"job_id": job.id, "job_key": job.key, "route": job.route, "pipeline": name, "model": algorithm.name,
            "model_version": algorithm.version, "device_uid": algorithm.device_uid, "study_uid": job.study_uid,
            "series_uid": job.series_uid, "scanner": scanner, "gate_distance": gate_distance(decision)}


def declined(job: Job, considered: Sequence[tuple[str, Algorithm, GateDecision]], scanner: Scanner) -> list[Inference]:
    """One "declined" record per pipeline whose domain did not hold the series."""
    return [Inference(**_base(job, name, algorithm, scanner, decision), outcome="declined", gate_applicable=False,
                      details={"reasons": list(decision.reasons), "notes": list(decision.notes), "measures": decision.measures})
            for name, algorithm, decision in considered]


def analysed(job: Job, name: str, algorithm: Algorithm, decision: GateDecision, findings: Findings | None, scanner: Scanner,
             timings: dict[str, float]) -> Inference:
    """The record of the pipeline that ran: per-structure confidence and volume, findings,
    scores, what was withheld, lung densitometry, timings."""
    details: dict[str, Any] = {"notes": list(decision.notes), "measures": decision.measures,
                               "timings": {k: round(v, 3) for k, v in timings.items()}}
    confidence: dict[str, float] = {}
    if findings is not None:
        confidence = {k: float(v) for k, v in findings.extra.get("confidence", {}).items()}
        details.update({
            "confidence": confidence,
            "volumes_ml": {m.name: round(m.volume_ml, 2) for m in findings.measurements if m.kind != "lesion"},
            "lesions": sum(1 for m in findings.measurements if m.kind == "lesion"),
            "findings": dict(findings.findings), "scores": {k: round(float(v), 4) for k, v in findings.scores.items()},
            "withheld": findings.extra.get("withheld", {}),
        })
        if findings.extra.get("lung_density"):
            details["lung_density"] = findings.extra["lung_density"]
    mean = sum(confidence.values()) / len(confidence) if confidence else None
    return Inference(**_base(job, name, algorithm, scanner, decision), outcome="analysed", gate_applicable=True,
                     mean_confidence=mean, details=details)


def failed(job: Job, name: str, algorithm: Algorithm | None, scanner: Scanner, error: str, final: bool) -> Inference:
    """A job that raised: the pipeline that was running (when known) and the error."""
    known = algorithm or Algorithm(name or job.pipeline, "")
    return Inference(**_base(job, name or job.pipeline, known, scanner, None), outcome="failed", gate_applicable=False,
                     details={"error": error[:2000], "final": final})
