"""Which version of a model pipeline serves, and its shadow (storage/model_versions.py).

A ``model`` pipeline named by the registry (``model: ct-organs``, no ``path``) is served by the
version ``dicom-node models promote`` made active, else by the built-in card. A version in
shadow runs beside it on every series the route offers the pipeline: gated by its own domain,
its findings compared with the active version's, recorded (an ``inferences`` row, outcome
``shadow``) and never sent. Workers look the versions up at each job, so a promotion or a
rollback takes effect at the next job without a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ai.trust.gate import check as gate_check
from ai.types import Findings

from ..config import NodeConfig, PipelineSpec
from ..errors import PipelineError
from ..pipelines.build import Pipeline, build_pipeline
from ..storage import model_versions
from ..storage.index import Index
from ..storage.inferences import Inference, Scanner
from ..storage.volume import gate_facts
from .inference_records import gate_distance
from .jobs import Job


def algorithm_of(pipeline: Any) -> Any:
    from ..results.identity import Algorithm

    return Algorithm(str(pipeline.name), str(pipeline.version), getattr(pipeline, "algorithm_family", "Artificial Intelligence"),
                     str(getattr(pipeline, "weights_digest", "") or ""))


class ServedModels:
    def __init__(self, config: NodeConfig, index: Index) -> None:
        self.config = config
        self.index = index
        self._built: dict[tuple[str, str], Pipeline] = {}

    def _spec(self, spec: PipelineSpec, state: str) -> PipelineSpec | None:
        if spec.kind != "model" or spec.path is not None or not spec.model:
            return spec if state == "active" else None
        row = model_versions.in_state(self.index, spec.model, state)
        if row is None:
            return spec if state == "active" else None
        return spec.model_copy(update={"path": Path(row["path"])})

    def pipeline(self, name: str, spec: PipelineSpec, state: str = "active") -> Pipeline | None:
        """The pipeline serving ``name`` in ``state`` ("active" or "shadow"; None: no shadow)."""
        chosen = self._spec(spec, state)
        if chosen is None:
            return None
        key = (name, f"{state}:{chosen.path}")
        if key not in self._built:
            self._built[key] = build_pipeline(chosen, uncertainty=self.config.results.uncertainty_map, name=name,
                                              work_root=Path(self.config.results.path) / "work")
        return self._built[key]

    def shadows(self, job: Job, source: Any, ran: tuple[str, Findings | None] | None, scanner: Scanner) -> list[Inference]:
        """Run every shadow version of the job's pipelines on ``source``; their records."""
        records = []
        for name in job.pipeline.split(","):
            spec = self.config.pipelines.get(name)
            try:
                shadow = self.pipeline(name, spec, "shadow") if spec is not None else None
            except PipelineError as exc:
                records.append(_record(job, name, None, scanner, None, {"error": f"the shadow version cannot be built: {exc}"}))
                continue
            if shadow is None:
                continue
            started = time.perf_counter()
            decision = gate_check(shadow.domain, gate_facts(source), source.volume)
            details: dict[str, Any] = {"gate": {"applicable": decision.applicable, "reasons": list(decision.reasons),
                                                "measures": decision.measures}}
            findings = None
            if decision.applicable:
                findings = shadow.run(source.volume)
                details["confidence"] = findings.extra.get("confidence", {})
                details["volumes_ml"] = {m.name: round(m.volume_ml, 2) for m in findings.measurements if m.kind != "lesion"}
                active = ran[1] if ran is not None and ran[0] == name else None
                details["agreement"] = agreement(active, findings) if active is not None else None
                details["active"] = "ran" if active is not None else "declined or another pipeline ran"
            details["seconds"] = round(time.perf_counter() - started, 2)
            records.append(_record(job, name, shadow, scanner, decision, details, findings))
        return records


def agreement(active: Findings, shadow: Findings) -> dict[str, float]:
    """Per structure (by name), the Dice between the active and the shadow version's masks."""
    names = {info.name: info.value for info in active.labels}
    out = {}
    for info in shadow.labels:
        if info.name not in names:
            continue
        a, b = active.label_map == names[info.name], shadow.label_map == info.value
        total = int(a.sum()) + int(b.sum())
        if total:
            out[info.name] = round(2.0 * float((a & b).sum()) / total, 4)
    return out


def _record(job: Job, name: str, pipeline: Any, scanner: Scanner, decision: Any, details: dict[str, Any],
            findings: Findings | None = None) -> Inference:
    algorithm = algorithm_of(pipeline) if pipeline is not None else None
    confidence = list((findings.extra.get("confidence", {}) if findings is not None else {}).values())
    return Inference(job.id, job.key, job.route, name, algorithm.name if algorithm else "", algorithm.version if algorithm else "",
                     algorithm.device_uid if algorithm else "", job.study_uid, job.series_uid, "shadow",
                     bool(decision is not None and decision.applicable), gate_distance(decision),
                     scanner, float(np.mean(confidence)) if confidence else None, details)
