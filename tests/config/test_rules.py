"""Rule conditions: a table per condition kind (attribute operators, association, counts,
all/any/not), the reasons they give, and the configuration mistakes they name."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicom_node.config.rules import RuleError, RuleFacts, parse_condition


def facts(**overrides: Any) -> RuleFacts:
    header = Dataset()
    header.Modality = "CT"
    header.BodyPartExamined = "CHEST"
    header.SeriesDescription = "Thorax 1.0 B70f"
    header.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    header.SliceThickness = "1.0"
    header.PatientAge = "063Y"
    header.ContrastBolusAgent = ""
    header.add_new(0x00191001, "LO", "Siemens private")
    header.ReferencedImageSequence = [Dataset()]
    values = {"calling_ae": "CT01", "called_ae": "AI_CHEST", "source_peer": "ct-scanner", "instances": 300,
              "slices": 300, "study_instances": 900, "study_series": 4}
    values.update(overrides)
    return RuleFacts(header=header, **values)


CASES = [
    # attribute operators
    ({"attribute": "Modality", "equals": "CT"}, True, "Modality equals 'CT'"),
    ({"attribute": "Modality", "equals": "ct"}, False, "Modality is 'CT', wanted: equals 'ct'"),
    ({"attribute": "Modality", "equals": "ct", "ignore_case": True}, True, "Modality equals 'ct' (any case)"),
    ({"attribute": "Modality", "one_of": ["MR", "CT"]}, True, "Modality is one of MR, CT"),
    ({"attribute": "BodyPartExamined", "one_of": ["ABDOMEN", "PELVIS"]}, False,
     "BodyPartExamined is 'CHEST', wanted: is one of ABDOMEN, PELVIS"),
    ({"attribute": "SeriesDescription", "regex": r"^thorax\b", "ignore_case": True}, True, None),
    ({"attribute": "SeriesDescription", "regex": r"^thorax\b"}, False,
     "SeriesDescription is 'Thorax 1.0 B70f', wanted: matches /^thorax\\b/"),
    ({"attribute": "ImageType", "contains": "AXIAL"}, True, "ImageType contains 'AXIAL'"),
    ({"attribute": "ImageType", "contains": "LOCALIZER"}, False,
     "ImageType is 'ORIGINAL\\\\PRIMARY\\\\AXIAL', wanted: contains 'LOCALIZER'"),
    ({"attribute": "ImageType", "equals": "ORIGINAL\\PRIMARY\\AXIAL"}, True, None),
    ({"attribute": "SliceThickness", "range": [0.5, 1.5]}, True, "SliceThickness is in [0.5, 1.5]"),
    ({"attribute": "SliceThickness", "range": [2, None]}, False, "SliceThickness is '1.0', wanted: is in [2, inf]"),
    ({"attribute": "PatientAge", "range": [18, None]}, False, None),  # '063Y' is no number: not in any range
    ({"attribute": "Modality", "present": True}, True, "Modality is present"),
    ({"attribute": "ContrastBolusAgent", "present": True}, False, "ContrastBolusAgent is absent, wanted: is present"),
    ({"attribute": "ContrastBolusAgent", "present": False}, True, None),
    ({"attribute": "ReferencedImageSequence", "present": True}, True, None),
    ({"attribute": "(0019,1001)", "regex": "siemens", "ignore_case": True}, True, None),
    ({"attribute": "00191001", "equals": "Siemens private"}, True, None),
    ({"attribute": "AccessionNumber", "equals": "A1"}, False, "AccessionNumber is absent, wanted: equals 'A1'"),
    # the association
    ({"calling_ae": "CT01"}, True, "calling_ae equals 'CT01'"),
    ({"calling_ae": {"one_of": ["CT02", "CT03"]}}, False, "calling_ae is 'CT01', wanted: is one of CT02, CT03"),
    ({"called_ae": {"regex": "^AI_"}}, True, None),
    ({"source_peer": "ct-scanner"}, True, None),
    ({"source_peer": {"present": False}}, False, "source_peer is 'ct-scanner', wanted: is absent"),
    # counts
    ({"instances": {"min": 50}}, True, "instances 300 >= 50"),
    ({"instances": {"max": 100}}, False, "instances is 300, wanted <= 100"),
    ({"slices": {"min": 100, "max": 2000}}, True, None),
    ({"study_instances": {"min": 1000}}, False, "study_instances is 900, wanted >= 1000"),
    ({"study_series": {"max": 4}}, True, None),
    # combinations
    ({"all": [{"attribute": "Modality", "equals": "CT"}, {"instances": {"min": 500}}]}, False,
     "instances is 300, wanted >= 500"),
    ({"any": [{"attribute": "Modality", "equals": "MR"}, {"calling_ae": "CT01"}]}, True, "calling_ae equals 'CT01'"),
    ({"any": [{"attribute": "Modality", "equals": "MR"}, {"calling_ae": "X"}]}, False,
     "none of: Modality is 'CT', wanted: equals 'MR' | calling_ae is 'CT01', wanted: equals 'X'"),
    ({"not": {"attribute": "ImageType", "contains": "LOCALIZER"}}, True, None),
    ({"not": {"attribute": "Modality", "equals": "CT"}}, False, "Modality equals 'CT', wanted: not (Modality equals 'CT')"),
    ([{"attribute": "Modality", "equals": "CT"}, {"not": {"called_ae": "AI_NEURO"}}], True, None),  # a list is all
]


@pytest.mark.parametrize(("condition", "holds", "reason"), CASES)
def test_condition_table(condition: Any, holds: bool, reason: str | None) -> None:
    verdict = parse_condition(condition).evaluate(facts())
    assert verdict.holds is holds
    if reason is not None:
        assert verdict.reason == reason


def test_descriptions_read_as_the_rule() -> None:
    rule = parse_condition({"all": [{"attribute": "Modality", "equals": "CT"},
                                    {"any": [{"instances": {"min": 50}}, {"calling_ae": {"one_of": ["A", "B"]}}]},
                                    {"not": {"attribute": "ImageType", "contains": "LOCALIZER"}}]})
    assert rule.describe() == ("Modality equals 'CT' and (instances >= 50 or calling_ae is one of A, B) "
                               "and not (ImageType contains 'LOCALIZER')")


MISTAKES = [
    ({"attribute": "Modalty", "equals": "CT"}, "attribute 'Modalty' is neither a DICOM keyword nor a tag"),
    ({"attribute": "Modality", "equal": "CT"}, "unknown key(s) equal"),
    ({"attribute": "Modality"}, "give exactly one operator"),
    ({"attribute": "Modality", "equals": "CT", "one_of": ["MR"]}, "give exactly one operator"),
    ({"attribute": "SeriesDescription", "regex": "("}, "is not a valid regular expression"),
    ({"attribute": "SliceThickness", "range": [3, 1]}, "low is above high"),
    ({"attribute": "SliceThickness", "range": [None, None]}, "range takes [low, high]"),
    ({"attribute": "Modality", "present": "yes"}, "present is true or false"),
    ({"attribute": "Modality", "one_of": []}, "one_of takes a non-empty list"),
    ({"modality": "CT"}, "a condition has exactly one of"),
    ({"all": []}, "a non-empty list of conditions"),
    ({"not": {"calling_ae": "A"}, "calling_ae": "B"}, "a condition has exactly one of"),
    ({"instances": 5}, "{min: N}, {max: N} or both"),
    ({"instances": {"min": 9, "max": 2}}, "min 9 is above max 2"),
    ({"calling_ae": {"range": [1, 2]}}, "unknown key(s) range"),
    ("CT", "a condition is a mapping"),
]


@pytest.mark.parametrize(("condition", "message"), MISTAKES)
def test_mistakes_are_named(condition: Any, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_condition({"all": [{"attribute": "Modality", "present": True}, condition]})
    assert message in str(caught.value)
    assert str(caught.value).startswith("when.all[1]")
