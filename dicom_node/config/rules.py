"""Routing rule conditions: read from the configuration as plain data, evaluated against what is
known of a series, each answer saying why.

A route's ``when:`` is a tree of conditions (no code: every operator is one of a fixed list):

- on a DICOM attribute of the series or its study, read from the header of one of its instances:
  ``{attribute: Modality, equals: CT}``; operators ``equals``, ``one_of``, ``regex`` (searched),
  ``contains`` (one value of a multi-valued attribute, e.g. ImageType contains LOCALIZER),
  ``range: [low, high]`` (numeric, inclusive, ``null`` for open), ``present: true|false``; text
  comparisons honour ``ignore_case: true``. The attribute is a keyword from the DICOM dictionary
  or a tag, ``"(0019,100A)"`` or ``"0019100A"``.
- on the association: ``{calling_ae: ...}``, ``{called_ae: ...}``, ``{source_peer: ...}``, each a
  text operator (``{one_of: [CT1, CT2]}``) or a plain value (equals);
- on counts: ``{instances: {min: 50}}``, ``{slices: {max: 1000}}``, ``{study_instances: ...}``,
  ``{study_series: ...}``;
- combined: ``{all: [...]}``, ``{any: [...]}``, ``{not: {...}}``.

Every verdict carries a reason a person can read: for a condition that failed, the condition and
the value the series had ("Modality is 'MR', not one of CT"), which `dicom-node routes test`
prints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

TEXT_OPERATORS = ("equals", "one_of", "regex", "contains", "present")
ATTRIBUTE_OPERATORS = (*TEXT_OPERATORS, "range")
CONTEXT_KEYS = ("calling_ae", "called_ae", "source_peer")
COUNT_KEYS = ("instances", "slices", "study_instances", "study_series")
GROUP_KEYS = ("all", "any", "not")
HEAD_KEYS = (*GROUP_KEYS, "attribute", *CONTEXT_KEYS, *COUNT_KEYS)


@dataclass(frozen=True)
class RuleFacts:
    """What rules see of one series: a header (study and series attributes, no pixel data),
    the association it came on, and counts."""

    header: Dataset
    calling_ae: str = ""
    called_ae: str = ""
    #: The configured peer whose AE title sent the series ('' when none is).
    source_peer: str = ""
    instances: int = 0
    #: Image frames in the series: instances times NumberOfFrames of the header (1 when absent).
    slices: int = 0
    study_instances: int = 0
    study_series: int = 0


@dataclass(frozen=True)
class Verdict:
    holds: bool
    #: Why: what held, or the condition that failed and what the series had instead.
    reason: str


class Condition(Protocol):
    def evaluate(self, facts: RuleFacts) -> Verdict: ...

    def describe(self) -> str: ...


class RuleError(ValueError):
    """A condition in the configuration that cannot be evaluated; the message says where."""


# -- text and number comparisons ---------------------------------------------------------------


@dataclass(frozen=True)
class TextTest:
    operator: str
    operand: Any
    ignore_case: bool = False

    def _norm(self, value: str) -> str:
        return value.strip().casefold() if self.ignore_case else value.strip()

    def test(self, values: list[str]) -> bool:
        """``values``: the element's values (one for single-valued text, [] when absent)."""
        whole = "\\".join(values)
        if self.operator == "present":
            return bool(values) == bool(self.operand)
        if not values:
            return False
        if self.operator == "equals":
            return self._norm(whole) == self._norm(str(self.operand))
        if self.operator == "one_of":
            return self._norm(whole) in {self._norm(str(v)) for v in self.operand}
        if self.operator == "contains":
            return self._norm(str(self.operand)) in {self._norm(v) for v in values}
        if self.operator == "regex":
            return re.search(self.operand, whole, re.IGNORECASE if self.ignore_case else 0) is not None
        if self.operator == "range":
            number = _number(values[0])
            low, high = self.operand
            return number is not None and (low is None or number >= low) and (high is None or number <= high)
        raise AssertionError(self.operator)

    def describe(self) -> str:
        case = " (any case)" if self.ignore_case and self.operator not in ("present", "range") else ""
        if self.operator == "present":
            return "is present" if self.operand else "is absent"
        if self.operator == "one_of":
            return f"is one of {', '.join(map(str, self.operand))}{case}"
        if self.operator == "regex":
            return f"matches /{self.operand}/{case}"
        if self.operator == "range":
            low, high = self.operand
            return f"is in [{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        return f"{self.operator} {self.operand!r}{case}"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _shown(values: list[str]) -> str:
    return "absent" if not values else repr("\\".join(values))


def _text_verdict(name: str, test: TextTest, values: list[str]) -> Verdict:
    """The verdict of ``test`` on ``values``, named ``name`` in its reason."""
    if test.test(values):
        return Verdict(True, f"{name} {test.describe()}")
    return Verdict(False, f"{name} is {_shown(values)}, wanted: {test.describe()}")


# -- leaves ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeCondition:
    tag: BaseTag
    name: str
    test: TextTest

    def values(self, header: Dataset) -> list[str]:
        """The element's values as text ([] when absent or empty)."""
        element = header.get(self.tag)
        if element is None:
            return []
        if element.VR == "SQ":
            return ["(sequence)"] if element.value else []
        value = element.value
        if value is None or value == "":
            return []
        if isinstance(value, bytes):
            return [value.decode("latin-1", "replace").strip()]
        items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
        return [str(v).strip() for v in items]

    def evaluate(self, facts: RuleFacts) -> Verdict:
        return _text_verdict(self.name, self.test, self.values(facts.header))

    def describe(self) -> str:
        return f"{self.name} {self.test.describe()}"


@dataclass(frozen=True)
class ContextCondition:
    key: str
    test: TextTest

    def evaluate(self, facts: RuleFacts) -> Verdict:
        value = str(getattr(facts, self.key))
        return _text_verdict(self.key, self.test, [value] if value else [])

    def describe(self) -> str:
        return f"{self.key} {self.test.describe()}"


@dataclass(frozen=True)
class CountCondition:
    key: str
    low: int | None
    high: int | None

    def evaluate(self, facts: RuleFacts) -> Verdict:
        count = int(getattr(facts, self.key))
        holds = (self.low is None or count >= self.low) and (self.high is None or count <= self.high)
        return Verdict(holds, f"{self.key} {count} {self._bounds()}" if holds
                       else f"{self.key} is {count}, wanted {self._bounds()}")

    def _bounds(self) -> str:
        parts = ([f">= {self.low}"] if self.low is not None else []) + ([f"<= {self.high}"] if self.high is not None else [])
        return " and ".join(parts)

    def describe(self) -> str:
        return f"{self.key} {self._bounds()}"


# -- groups ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Condition, ...]

    def evaluate(self, facts: RuleFacts) -> Verdict:
        held = []
        for part in self.parts:
            verdict = part.evaluate(facts)
            if not verdict.holds:
                return verdict  # the first that failed is the reason
            held.append(verdict.reason)
        return Verdict(True, "; ".join(held) or "no conditions")

    def describe(self) -> str:
        return " and ".join(_grouped(p) for p in self.parts) or "always"


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Condition, ...]

    def evaluate(self, facts: RuleFacts) -> Verdict:
        failed = []
        for part in self.parts:
            verdict = part.evaluate(facts)
            if verdict.holds:
                return verdict
            failed.append(verdict.reason)
        return Verdict(False, "none of: " + " | ".join(failed))

    def describe(self) -> str:
        return " or ".join(_grouped(p) for p in self.parts)


@dataclass(frozen=True)
class Not:
    part: Condition

    def evaluate(self, facts: RuleFacts) -> Verdict:
        verdict = self.part.evaluate(facts)
        return Verdict(not verdict.holds, f"not ({verdict.reason})" if not verdict.holds
                       else f"{verdict.reason}, wanted: not ({self.part.describe()})")

    def describe(self) -> str:
        return f"not ({self.part.describe()})"


def _grouped(condition: Condition) -> str:
    text = condition.describe()
    return f"({text})" if isinstance(condition, (AllOf, AnyOf)) and len(condition.parts) > 1 else text


# -- parsing -----------------------------------------------------------------------------------


def _tag(name: str, where: str) -> tuple[BaseTag, str]:
    text = str(name).strip()
    found = tag_for_keyword(text)
    if found is not None:
        return Tag(found), text
    match = re.fullmatch(r"\(?\s*(?:0x)?([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?", text)
    if match is None:
        raise RuleError(f"{where}: attribute {text!r} is neither a DICOM keyword nor a tag like (0010,0020)")
    tag = Tag(int(match.group(1), 16), int(match.group(2), 16))
    return tag, keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def _text_test(data: Mapping[str, Any], where: str, operators: Sequence[str]) -> TextTest:
    given = [k for k in data if k in operators]
    unknown = [k for k in data if k not in operators and k != "ignore_case"]
    if unknown:
        raise RuleError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (operators: {', '.join(operators)}, "
                        "and ignore_case)")
    if len(given) != 1:
        raise RuleError(f"{where}: give exactly one operator of {', '.join(operators)} (got {', '.join(given) or 'none'})")
    operator = given[0]
    operand = data[operator]
    ignore_case = data.get("ignore_case", False)
    if not isinstance(ignore_case, bool):
        raise RuleError(f"{where}: ignore_case is true or false")
    if operator == "one_of":
        operand = [operand] if isinstance(operand, (str, int, float)) else operand
        if not isinstance(operand, list) or not operand or not all(isinstance(v, (str, int, float)) for v in operand):
            raise RuleError(f"{where}: one_of takes a non-empty list of values")
    elif operator in ("equals", "contains"):
        if not isinstance(operand, (str, int, float)) or isinstance(operand, bool):
            raise RuleError(f"{where}: {operator} takes one value")
    elif operator == "regex":
        try:
            re.compile(str(operand))
        except re.error as exc:
            raise RuleError(f"{where}: regex {operand!r} is not a valid regular expression: {exc}") from None
        operand = str(operand)
    elif operator == "present":
        if not isinstance(operand, bool):
            raise RuleError(f"{where}: present is true or false")
    elif operator == "range":
        if (not isinstance(operand, list) or len(operand) != 2
                or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in operand)
                or operand == [None, None]):
            raise RuleError(f"{where}: range takes [low, high], numbers (null for an open end)")
        if None not in operand and operand[0] > operand[1]:
            raise RuleError(f"{where}: range {operand}: low is above high")
        operand = (operand[0], operand[1])
    return TextTest(operator, operand, ignore_case)


def parse_condition(data: Any, where: str = "when") -> Condition:
    """The condition tree for configuration ``data``; RuleError says where what is wrong."""
    if isinstance(data, list):
        return AllOf(tuple(parse_condition(item, f"{where}[{n}]") for n, item in enumerate(data)))
    if not isinstance(data, Mapping):
        raise RuleError(f"{where}: a condition is a mapping like {{attribute: Modality, equals: CT}}, got {data!r}")
    heads = [k for k in data if k in HEAD_KEYS]
    if len(heads) != 1:
        raise RuleError(f"{where}: a condition has exactly one of {', '.join(HEAD_KEYS)} "
                        f"(got {', '.join(map(str, data)) or 'nothing'})")
    head = heads[0]
    rest = {k: v for k, v in data.items() if k != head}
    if head in ("all", "any"):
        if rest:
            raise RuleError(f"{where}: '{head}' stands alone (also got {', '.join(map(str, rest))})")
        items = data[head]
        if not isinstance(items, list) or not items:
            raise RuleError(f"{where}.{head}: a non-empty list of conditions")
        parts = tuple(parse_condition(item, f"{where}.{head}[{n}]") for n, item in enumerate(items))
        return AllOf(parts) if head == "all" else AnyOf(parts)
    if head == "not":
        if rest:
            raise RuleError(f"{where}: 'not' stands alone (also got {', '.join(map(str, rest))})")
        return Not(parse_condition(data["not"], f"{where}.not"))
    if head == "attribute":
        tag, name = _tag(data["attribute"], where)
        return AttributeCondition(tag, name, _text_test(rest, f"{where} ({name})", ATTRIBUTE_OPERATORS))
    if head in CONTEXT_KEYS:
        if rest:
            raise RuleError(f"{where}: {head} takes its operator inside it, e.g. {{{head}: {{one_of: [A, B]}}}}")
        value = data[head]
        spec = value if isinstance(value, Mapping) else {"equals": value}
        return ContextCondition(head, _text_test(spec, f"{where}.{head}", TEXT_OPERATORS))
    # counts
    if rest:
        raise RuleError(f"{where}: {head} takes {{min: N, max: N}} inside it")
    value = data[head]
    if not isinstance(value, Mapping) or not value or set(value) - {"min", "max"}:
        raise RuleError(f"{where}.{head}: {{min: N}}, {{max: N}} or both")
    low, high = value.get("min"), value.get("max")
    for bound in (low, high):
        if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool) or bound < 0):
            raise RuleError(f"{where}.{head}: min and max are whole numbers >= 0")
    if low is not None and high is not None and low > high:
        raise RuleError(f"{where}.{head}: min {low} is above max {high}")
    return CountCondition(head, low, high)


ALWAYS = AllOf(())
