"""When a series or study is complete (``completion``) and what happens to it then (``routes``:
the match, the trigger, the pipelines, the peers to forward to or send results to)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from .base import _Section
from .rules import AllOf, AttributeCondition, Condition, ContextCondition, CountCondition, RuleError, TextTest, parse_condition


class CompletionSection(_Section):
    series_stable_seconds: float = Field(10.0, gt=0)
    study_stable_seconds: float = Field(30.0, gt=0)
    #: How often the completion sweep looks at the index.
    sweep_interval_seconds: float = Field(1.0, gt=0)


class RouteMatch(_Section):
    """What a completed series must look like for a route to take it. Every key given must
    match; text keys compare case-insensitively, ``series_description`` is a regular expression
    searched in the description."""

    modality: list[str] = []
    body_part_examined: list[str] = []
    calling_ae: list[str] = []
    series_description: str | None = None
    min_instances: int = Field(1, ge=1)

    @field_validator("modality", "body_part_examined", "calling_ae", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("series_description")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class StudyTrigger(_Section):
    """When a ``trigger: study`` route acts on a study: once it has been quiet for
    ``quiet_seconds`` (default: completion.study_stable_seconds) with every series complete, or,
    with ``required_series`` (a condition each), as soon as each is met by a complete series of
    the study; ``max_wait_seconds`` after the study (version) began, ``on_timeout`` says what
    happens to a study still waiting: ``process`` what is there, or ``discard`` it (logged)."""

    quiet_seconds: float | None = Field(None, gt=0)
    required_series: list[Any] = []
    max_wait_seconds: float | None = Field(None, gt=0)
    on_timeout: Literal["process", "discard"] = "process"


class DeidentifiedTarget(_Section):
    """An item of a route's ``forward`` or ``destinations`` that gets its instances de-identified
    by the named profile (``deidentification.profiles``) on the way out: ``{peer: NAME,
    deidentify: PROFILE}``. Results such a peer sends back are mapped to the original patient
    and study and go to the route's plain destinations (privacy/reidentify.py)."""

    peer: str = Field(min_length=1)
    deidentify: str = Field(min_length=1)


class PriorsSpec(_Section):
    """A route's priors: the ``count`` most recent other studies of the same patient on
    ``source`` (a peer with ``query: true``; default: the peer that sent the series, when it
    has query: true) with the series' modality (``match: modality``), body part
    (``body_part``) or both, retrieved before the job runs and handed to ``command`` pipelines,
    each in a folder of its own (pipelines/command.py)."""

    count: int = Field(1, ge=1, le=10)
    match: Literal["modality", "body_part", "both"] = "modality"
    source: str | None = None


class Route(_Section):
    """A routing rule. A completed series that matches goes to ``pipeline``, whose results go to
    ``destinations`` (peer names; ``sender`` means the peer that sent the series, when it may
    receive), and/or its instances are forwarded unchanged to the peers in ``forward``;
    ``discard: true`` takes it and does nothing more (logged).

    Rules are evaluated in the order written. ``on_match: continue`` (default) lets later rules
    act on the same series too; ``stop`` ends the evaluation there (so does ``discard``). A
    ``fallback: true`` rule acts only when no other rule of its trigger matched. The conditions
    are ``match:`` (the short form: modality, body part, calling AE, description, count) and
    ``when:`` (any attribute, the association, counts; all/any/not: rules.py), both must hold.
    ``trigger: series`` acts per completed series; ``trigger: study`` waits for the study
    (``study:``, StudyTrigger) and then acts on each of its complete series that match.

    ``pipeline`` may be a list: the first whose domain the series is in runs (the gate, ai/trust);
    when none is, the job ends ``not applicable`` and, with ``on_not_applicable: report``, the
    destinations are told why."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    match: RouteMatch = RouteMatch()
    when: Any = None
    trigger: Literal["series", "study"] = "series"
    study: StudyTrigger = StudyTrigger()
    on_match: Literal["continue", "stop"] = "continue"
    fallback: bool = False
    discard: bool = False
    pipeline: str | list[str] | None = None
    on_not_applicable: Literal["report", "silent"] = "report"
    destinations: list[str | DeidentifiedTarget] = ["sender"]
    forward: list[str | DeidentifiedTarget] = []
    priority: Literal["urgent", "routine"] = "routine"
    priors: PriorsSpec | None = None
    #: Also send a Key Object Selection of the key images (results/key_images.py).
    key_images: bool = False
    _condition: Condition = PrivateAttr()
    _required: tuple[Condition, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _parse_conditions(self) -> Route:
        try:
            parts: list[Condition] = list(match_conditions(self.match))
            if self.when is not None:
                when = parse_condition(self.when, "when")
                parts.extend(when.parts if isinstance(when, AllOf) else [when])
            self._condition = AllOf(tuple(parts))
            self._required = tuple(parse_condition(c, f"study.required_series[{n}]")
                                   for n, c in enumerate(self.study.required_series))
        except RuleError as exc:
            raise ValueError(f"route {self.name}: {exc}") from None
        if self._required and self.study.max_wait_seconds is None:
            raise ValueError(f"route {self.name}: study.required_series needs study.max_wait_seconds (how long to wait "
                             "for them)")
        if self.trigger == "series" and self.study != StudyTrigger():
            raise ValueError(f"route {self.name}: study: applies to trigger: study only")
        names = self.forward_peers
        if len(set(names)) < len(names) or len(set(self.destination_peers)) < len(self.destination_peers):
            raise ValueError(f"route {self.name}: a peer is named twice in forward or destinations")
        if self.discard and (self.pipeline is not None or self.forward):
            raise ValueError(f"route {self.name}: discard takes the series and does nothing with it; no pipeline or "
                             "forward beside it")
        return self

    @property
    def condition(self) -> Condition:
        """Everything the series must satisfy: ``match:`` and ``when:`` together."""
        return self._condition

    @property
    def required_series(self) -> tuple[Condition, ...]:
        return self._required

    @property
    def stops(self) -> bool:
        """Whether a match ends the evaluation of later rules."""
        return self.on_match == "stop" or self.discard

    @property
    def pipeline_names(self) -> list[str]:
        """The route's pipelines in the order they are tried (empty: forward only)."""
        if self.pipeline is None:
            return []
        return [self.pipeline] if isinstance(self.pipeline, str) else list(self.pipeline)

    @property
    def forward_peers(self) -> list[str]:
        """The peer names of ``forward``, de-identified or not."""
        return [t if isinstance(t, str) else t.peer for t in self.forward]

    @property
    def destination_peers(self) -> list[str]:
        return [t if isinstance(t, str) else t.peer for t in self.destinations]

    def profile_for(self, peer: str, kind: Literal["forward", "destination"]) -> str | None:
        """The de-identification profile ``peer`` gets as a forward peer or a destination (None: plain)."""
        for target in self.forward if kind == "forward" else self.destinations:
            if isinstance(target, DeidentifiedTarget) and target.peer == peer:
                return target.deidentify
        return None

    @property
    def deidentifies(self) -> bool:
        """Whether anything leaves this route de-identified."""
        return any(isinstance(t, DeidentifiedTarget) for t in [*self.forward, *self.destinations])

    @property
    def plain_destinations(self) -> list[str]:
        """The destinations that get identified data: where results returning from a
        de-identified forward go."""
        return [t for t in self.destinations if isinstance(t, str)]


def match_conditions(match: RouteMatch) -> list[Condition]:
    """The short ``match:`` form as conditions (text compared in any case, as it always was)."""
    from pydicom.tag import Tag

    parts: list[Condition] = []
    for key, keyword, tag in (("modality", "Modality", 0x00080060), ("body_part_examined", "BodyPartExamined", 0x00180015)):
        values = getattr(match, key)
        if values:
            parts.append(AttributeCondition(Tag(tag), keyword, TextTest("one_of", list(values), ignore_case=True)))
    if match.calling_ae:
        parts.append(ContextCondition("calling_ae", TextTest("one_of", list(match.calling_ae), ignore_case=True)))
    if match.series_description is not None:
        parts.append(AttributeCondition(Tag(0x0008103E), "SeriesDescription",
                                        TextTest("regex", match.series_description, ignore_case=True)))
    if match.min_instances > 1:
        parts.append(CountCondition("instances", match.min_instances, None))
    return parts
