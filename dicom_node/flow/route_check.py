"""``dicom-node routes test PATH|STUDY_UID``: which rules would act on a study, and why the
others would not, before a single instance is sent.

Files and folders are grouped into series by their headers (as the listener would index them);
a Study Instance UID is looked up in the node's index (read-only: a running node is not held
up). Each series is evaluated by the same code the router runs (routing.evaluate_rules), so
what this prints is what the node does, apart from time: a study rule's quiet time and maximum
wait are shown, not waited for.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..config import NodeConfig, Route, is_postgres_url
from ..config.rules import RuleFacts
from .rule_evaluation import Evaluation, evaluate_rules, rule_facts, source_peer


@dataclass
class SeriesReport:
    series_uid: str
    label: str
    facts: RuleFacts
    evaluations: list[Evaluation] = field(default_factory=list)


@dataclass
class StudyRuleReport:
    route: Route
    #: Series UIDs the rule would act on.
    acting: list[str]
    #: Required series: (condition, met).
    required: list[tuple[str, bool]]


def facts_from_files(paths: list[Path], config: NodeConfig, calling_ae: str = "", called_ae: str = "") -> list[SeriesReport]:
    """Series found in ``paths`` (files or folders; what is not DICOM is skipped)."""
    groups: dict[str, list[Dataset]] = {}
    for path in paths:
        for candidate in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if not candidate.is_file():
                continue
            try:
                header = dcmread(candidate, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError):
                continue
            uid = str(header.get("SeriesInstanceUID", ""))
            if uid:
                groups.setdefault(uid, []).append(header)
    study_counts: dict[str, list[int]] = {}
    for headers in groups.values():
        study = str(headers[0].get("StudyInstanceUID", ""))
        study_counts.setdefault(study, []).append(len(headers))
    reports = []
    for uid, headers in groups.items():
        headers.sort(key=lambda h: (_number(h.get("InstanceNumber")), str(h.get("SOPInstanceUID", ""))))
        first = headers[0]
        counts = study_counts[str(first.get("StudyInstanceUID", ""))]
        frames = max(1, _number(first.get("NumberOfFrames")) or 1)
        facts = RuleFacts(header=first, calling_ae=calling_ae, called_ae=called_ae or config.node.ae_title,
                            source_peer=source_peer(calling_ae, config.peers), instances=len(headers),
                            slices=len(headers) * frames, study_instances=sum(counts), study_series=len(counts))
        reports.append(SeriesReport(uid, _label(first, len(headers)), facts))
    return reports


def facts_from_index(location: Path | str, study_uid: str, config: NodeConfig) -> list[SeriesReport]:
    """The series of a study in the node's index (a SQLite file opened read-only, or PostgreSQL)."""
    if is_postgres_url(location):
        from ..storage.index_postgres import PgConnection

        db: Any = PgConnection(str(location))
    else:
        db = sqlite3.connect(f"file:{location}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
    try:
        rows = db.execute("SELECT * FROM series WHERE study_uid = ? ORDER BY series_number, series_uid", (study_uid,)).fetchall()
        reports = []
        for row in rows:
            facts = rule_facts(db, row, config.peers)
            reports.append(SeriesReport(row["series_uid"], _label(facts.header, facts.instances), facts))
        return reports
    finally:
        db.close()


def evaluate(reports: list[SeriesReport], config: NodeConfig) -> list[StudyRuleReport]:
    """Fill each series' evaluations by the series rules; return the study rules' view."""
    series_rules = [r for r in config.routes if r.trigger == "series"]
    for report in reports:
        report.evaluations = evaluate_rules(series_rules, report.facts)
    study_rules = []
    for rule in (r for r in config.routes if r.trigger == "study"):
        acting = [r.series_uid for r in reports if rule.condition.evaluate(r.facts).holds]
        required = [(c.describe(), any(c.evaluate(r.facts).holds for r in reports)) for c in rule.required_series]
        study_rules.append(StudyRuleReport(rule, acting, required))
    return study_rules


def render(reports: list[SeriesReport], study_rules: list[StudyRuleReport], config: NodeConfig) -> str:
    """The report as text: per series, every series rule with its answer; then the study rules."""
    lines: list[str] = []
    series_rules = [r for r in config.routes if r.trigger == "series"]
    for report in reports:
        lines.append(f"series {report.series_uid}: {report.label}")
        if not series_rules:
            lines.append("  (no series rules)")
        for evaluation in report.evaluations:
            lines.append("  " + _line(evaluation))
        if series_rules and not any(e.acts for e in report.evaluations):
            lines.append("  -> no rule acts: the series is stored, not analysed or forwarded")
    for study in study_rules:
        rule = study.route
        lines.append(f"study rule {rule.name} ({_actions(rule)}):")
        wait = (f"required series, at most {rule.study.max_wait_seconds:.0f} s, then {rule.study.on_timeout}"
                if rule.required_series else
                f"once quiet {rule.study.quiet_seconds or config.completion.study_stable_seconds:.0f} s")
        lines.append(f"  trigger: study, {wait}")
        for text, met in study.required:
            lines.append(f"  required: {text}: {'present' if met else 'MISSING'}")
        lines.append(f"  would act on {len(study.acting)} of {len(reports)} series"
                     + (f": {', '.join(study.acting)}" if study.acting else f" ({rule.condition.describe()})"))
    return "\n".join(lines)


def as_json(reports: list[SeriesReport], study_rules: list[StudyRuleReport]) -> dict[str, Any]:
    return {
        "series": [{"series_uid": r.series_uid, "label": r.label, "rules": [
            {"route": e.route.name, "holds": e.verdict.holds, "acts": e.acts, "reason": e.verdict.reason, "note": e.note}
            for e in r.evaluations]} for r in reports],
        "study_rules": [{"route": s.route.name, "acting": s.acting,
                         "required": [{"condition": c, "present": m} for c, m in s.required]} for s in study_rules],
    }


def describe_route(route: Route, config: NodeConfig) -> str:
    """One line per rule, as the node logs them at start-up."""
    kind = "fallback " if route.fallback else ""
    if route.trigger == "study":
        trigger = (f"study rule, waits for {len(route.required_series)} required series (at most "
                   f"{route.study.max_wait_seconds:.0f} s, then {route.study.on_timeout})" if route.required_series else
                   f"study rule, once the study is quiet {route.study.quiet_seconds or config.completion.study_stable_seconds:.0f} s")
    else:
        trigger = "series rule"
    return f"route {route.name}: {kind}{trigger}, when {route.condition.describe()} -> {_actions(route)}"


def _line(evaluation: Evaluation) -> str:
    route = evaluation.route
    if evaluation.acts:
        return f"ACTS     {route.name} ({_actions(route)}): {evaluation.verdict.reason}"
    if evaluation.verdict.holds:
        return f"skipped  {route.name}: {evaluation.note}"
    return f"no       {route.name}: {evaluation.verdict.reason}"


def _actions(route: Route) -> str:
    if route.discard:
        return "discard"
    parts = []
    if route.pipeline_names:
        parts.append(f"analyse with {' then '.join(route.pipeline_names)}, results to {_targets(route.destinations)}")
    if route.forward:
        parts.append(f"forward to {_targets(route.forward)}")
        if route.deidentifies and route.plain_destinations:
            parts.append(f"results coming back to {', '.join(route.plain_destinations)}")
    return "; ".join(parts) + (", stop" if route.stops else "")


def _label(header: Dataset, count: int) -> str:
    description = str(header.get("SeriesDescription", "") or "").strip()
    modality = str(header.get("Modality", "") or "?")
    return f"{modality} {description!r}, {count} instance(s)" if description else f"{modality}, {count} instance(s)"


def _number(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _targets(targets: list) -> str:
    """Peer names, a de-identified one with its profile: 'pacs, extai (de-identified: research)'."""
    return ", ".join(t if isinstance(t, str) else f"{t.peer} (de-identified: {t.deidentify})" for t in targets)
