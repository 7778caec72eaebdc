"""De-identification of one instance by PS3.15 Annex E: the Basic Application Level
Confidentiality Profile with the options a named profile switches on.

Every attribute, at every depth of nested sequences, gets the action Table E.1-1 gives it
(table.py resolves options and compound codes):

- ``X`` removed; ``Z`` emptied (a sequence: no items); ``K`` kept;
- ``D`` a dummy value of its VR (UIDs: a pseudonym, so references stay consistent; dates:
  1900-01-01, or the patient's shifted date when Retain Longitudinal with Modified Dates is on);
- ``U`` the UID's pseudonym (pseudonyms.py: HMAC under the site key), every value of it;
- ``C`` cleaned, by the option that asked: Retain Longitudinal with Modified Dates shifts DA and DT
  by the patient's offset (TM is kept: whole days move; a binary timestamp is removed); Clean Descriptors and Clean Structured
  Content remove from the text every value of the instance's identifying attributes (names and
  their parts, IDs, accession and study numbers, birth date, institution, addresses, phone
  numbers) and process nested items by the table; Clean Graphics cannot judge graphics and
  removes them instead (removal is the stricter reading);
- private attributes (odd groups) are removed, except, with Retain Safe Private, the elements the
  profile lists as safe (private creator and element) and their creator elements.

Attributes not in the table are standard attributes the profile keeps (their sequences are still
walked). Patient Name and Patient ID, which the table empties (Z), take the patient's pseudonym
instead (a permitted dummy value), so a de-identified study is still one patient at the receiver.

The instance then says what was done (PS3.15 E.1.1, PS3.3 C.12.1): Patient Identity Removed YES,
De-identification Method and its Code Sequence (113100 and each option's code), Longitudinal
Temporal Information Modified (MODIFIED, UNMODIFIED or REMOVED).

Pixel data is never altered. An instance that may carry identity burned into its pixels --
Burned In Annotation YES, or an ultrasound or secondary capture instance that does not say NO --
is held back (``Held``) under the profile's ``burned_in: hold`` policy, with the reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from ..config.privacy import DeidentificationSection
from ..errors import ConfigError
from .pseudonyms import PseudonymKey, shift_date, shift_datetime
from .table import BASIC_PROFILE, OPTIONS, Action, Table, load_table

#: SOP Classes and modalities that may carry identity in their pixels unless they say otherwise.
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
ULTRASOUND_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.6.2"}

_DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0",
          "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0, "AT": 0}
_TEXT_LIMITS = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240, "UT": 1 << 20, "UC": 1 << 20,
                "UR": 1 << 20}
_BINARY = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}

#: Keywords whose values are identifying and are searched for in descriptors being cleaned.
_IDENTIFYING = ("PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientNames", "PatientBirthName",
                "PatientMotherBirthName", "PatientBirthDate", "AccessionNumber", "StudyID", "InstitutionName",
                "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName", "PerformingPhysicianName",
                "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "PatientAddress",
                "PatientTelephoneNumbers", "MilitaryRank", "RequestingPhysician", "StationName")


@dataclass(frozen=True)
class SafePrivate:
    """A private element a profile may keep under Retain Safe Private: its group, private
    creator and element offset within the creator's block (0x00-0xFF)."""

    group: int
    creator: str
    element: int


@dataclass(frozen=True)
class Profile:
    """A named set of options (table.OPTIONS) and the policies that go with them."""

    name: str
    options: frozenset[str] = frozenset()
    burned_in: str = "hold"  # hold | send
    safe_private: tuple[SafePrivate, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(self.options - set(OPTIONS))
        if unknown:
            raise ValueError(f"profile {self.name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
        if {"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"} <= self.options:
            raise ValueError(f"profile {self.name}: retain_longitudinal_full_dates and retain_longitudinal_modified_dates "
                             "exclude each other")


@dataclass
class Report:
    """What de-identifying one instance did: actions counted by code, and the rows acted on."""

    actions: Counter[str] = field(default_factory=Counter)
    rows: set[str] = field(default_factory=set)
    private_removed: int = 0
    private_kept: int = 0
    #: Original UID -> pseudonym, for every UID replaced (the caller may record the mapping).
    uids: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Held:
    """Why an instance is not sent."""

    reason: str


def burned_in_reason(ds: Dataset, profile: Profile) -> str:
    """Why ``ds`` may carry identity in its pixels and is held back under the profile's policy
    ('' when it may go)."""
    if profile.burned_in == "send":
        return ""
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return "Burned In Annotation is YES (identity may be in the pixels)"
    sop_class = str(ds.get("SOPClassUID", ""))
    if burned != "NO":
        if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
            return "a secondary capture that does not say Burned In Annotation NO"
        if sop_class in ULTRASOUND_SOP_CLASSES or str(ds.get("Modality", "")).upper() == "US":
            return "an ultrasound image that does not say Burned In Annotation NO"
    return ""


class Deidentifier:
    """Applies one profile with one site key. Thread-safe: it holds no per-instance state."""

    def __init__(self, profile: Profile, key: PseudonymKey | None, table: Table | None = None) -> None:
        self.profile = profile
        self.key = key
        self.table = table or load_table()
        self.options = profile.options
        if key is None and "retain_uids" not in self.options:
            raise ValueError(f"profile {profile.name}: replacing UIDs needs deidentification.key_file")
        self._safe = {(s.group, s.creator.strip().upper(), s.element) for s in profile.safe_private}

    # -- the whole instance --------------------------------------------------------------------

    def check(self, ds: Dataset) -> Held | None:
        reason = burned_in_reason(ds, self.profile)
        return Held(reason) if reason else None

    def patient_pseudonym(self, ds: Dataset) -> str:
        if self.key is None:
            return ""
        return self.key.patient_id(str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or ""))

    def apply(self, ds: Dataset) -> Report:
        """De-identify ``ds`` in place (its file meta too) and say what was done."""
        report = Report()
        sop_class = str(ds.get("SOPClassUID", "")) or None
        patient = (str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or ""))
        shift = self.key.date_shift(*patient) if self.key is not None else timedelta(0)
        pseudonym = self.patient_pseudonym(ds)
        needles = _identifying_values(ds)
        self._walk(ds, sop_class, shift, needles, report, nested=False)
        if pseudonym:
            ds.PatientID = pseudonym
            ds.PatientName = pseudonym + "^"  # a family name alone, said so (PS3.5 6.2.1.2)
        self._declare(ds)
        if getattr(ds, "file_meta", None) is not None and "SOPInstanceUID" in ds:
            meta: FileMetaDataset = ds.file_meta
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                            "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID", "PrivateInformation"):
                if keyword in meta:
                    delattr(meta, keyword)
        return report

    def _declare(self, ds: Dataset) -> None:
        options = [name for name in OPTIONS if name in self.options]
        ds.PatientIdentityRemoved = "YES"
        method = ["DICOM PS3.15 E.1 Basic Profile"] + [OPTIONS[name][1][:64] for name in options]
        ds.DeidentificationMethod = method if len(method) > 1 else method[0]
        codes = []
        for value, meaning in [BASIC_PROFILE] + [OPTIONS[name] for name in options]:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes
        if "retain_longitudinal_full_dates" in self.options:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif "retain_longitudinal_modified_dates" in self.options:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"

    # -- attribute by attribute ----------------------------------------------------------------

    def _walk(self, ds: Dataset, sop_class: str | None, shift: timedelta, needles: list[str], report: Report,
              nested: bool) -> None:
        private_blocks = self._kept_private_blocks(ds)
        for element in list(ds):
            tag = int(element.tag)
            if Tag(tag).is_private:
                self._private(ds, element, private_blocks, report)
                continue
            row = self.table.row(tag)
            if row is None:
                if element.VR == "SQ":
                    self._items(element, sop_class, shift, needles, report)
                continue
            action = self.table.action(row, self.options, tag, None if nested else sop_class)
            report.actions[action.code] += 1
            report.rows.add(row.tag)
            self._act(ds, element, action, sop_class, shift, needles, report)

    def _items(self, element: DataElement, sop_class: str | None, shift: timedelta, needles: list[str],
               report: Report) -> None:
        for item in element.value or []:
            self._walk(item, sop_class, shift, needles, report, nested=True)

    def _act(self, ds: Dataset, element: DataElement, action: Action, sop_class: str | None, shift: timedelta,
             needles: list[str], report: Report) -> None:
        code, vr = action.code, element.VR
        if code == "X" or (code == "C" and action.option == "clean_graphics"):
            del ds[element.tag]
        elif code == "Z":
            element.value = Sequence() if vr == "SQ" else (b"" if vr in _BINARY else None)
        elif code == "K":
            if vr == "SQ":
                self._items(element, sop_class, shift, needles, report)
        elif code == "U" or (code == "D" and vr == "UI"):
            self._replace_uids(element, report)
        elif code == "D":
            self._dummy(element, sop_class, shift, needles, report)
        elif code == "C":
            self._clean(ds, element, action.option, sop_class, shift, needles, report)
        else:  # a code the table does not define: remove, the safe side
            del ds[element.tag]

    def _replace_uids(self, element: DataElement, report: Report) -> None:
        if element.VR == "SQ":  # U* on a sequence: the UIDs within it
            for item in element.value or []:
                self._uids_in(item, report)
            return
        if element.VR != "UI" or self.key is None or element.value in (None, ""):
            if element.VR != "UI":
                element.value = None
            return
        values = element.value if isinstance(element.value, MultiValue) else [element.value]
        replaced = []
        for value in values:
            original = str(value).strip().rstrip("\0")
            pseudonym = report.uids.get(original) or self.key.uid(original)
            report.uids[original] = pseudonym
            replaced.append(pseudonym)
        element.value = replaced if len(replaced) > 1 else replaced[0]

    def _uids_in(self, ds: Dataset, report: Report) -> None:
        for element in ds:
            if element.VR == "UI" and self.table.row(int(element.tag)) is not None:
                self._replace_uids(element, report)
            elif element.VR == "SQ":
                for item in element.value or []:
                    self._uids_in(item, report)

    def _dummy(self, element: DataElement, sop_class: str | None, shift: timedelta, needles: list[str],
               report: Report) -> None:
        vr = element.VR
        if vr == "SQ":  # a dummy sequence: its items, de-identified by the table
            self._items(element, sop_class, shift, needles, report)
        elif vr in _DUMMY:
            element.value = _DUMMY[vr]
        elif vr in _BINARY:
            element.value = b"\0\0"
        else:
            element.value = _DUMMY_TEXT[:_TEXT_LIMITS.get(vr, 16)]

    def _clean(self, ds: Dataset, element: DataElement, option: str, sop_class: str | None, shift: timedelta,
               needles: list[str], report: Report) -> None:
        vr = element.VR
        if option == "retain_longitudinal_modified_dates":
            if vr in ("DA", "DT"):
                move = shift_date if vr == "DA" else shift_datetime
                values = element.value if isinstance(element.value, MultiValue) else [element.value]
                moved = [move(str(v), shift) for v in values if v not in (None, "")]
                element.value = (moved if len(moved) > 1 else moved[0]) if moved and all(moved) else None
            elif vr == "SQ":
                self._items(element, sop_class, shift, needles, report)
            elif vr in _BINARY:  # a binary timestamp (Frame Origin Timestamp) cannot be shifted: removed
                del ds[element.tag]
            # TM and a timezone offset: whole days move, times stay
            return
        if option == "retain_safe_private":
            return  # private elements: _private decides
        if vr == "SQ":
            self._items(element, sop_class, shift, needles, report)
        elif vr in _TEXT_LIMITS and element.value not in (None, ""):
            element.value = clean_text(element.value, needles)
        elif vr in ("DA", "DT", "TM"):
            element.value = None
        elif vr in _BINARY:
            del ds[element.tag]

    # -- private attributes --------------------------------------------------------------------

    def _kept_private_blocks(self, ds: Dataset) -> dict[tuple[int, int], str]:
        """(group, block) -> creator, for the private blocks holding a safe element."""
        if "retain_safe_private" not in self.options or not self._safe:
            return {}
        blocks: dict[tuple[int, int], str] = {}
        for element in ds:
            tag = element.tag
            if tag.is_private and 0x10 <= tag.element <= 0xFF:
                creator = str(element.value or "").strip().upper()
                if any(group == tag.group and name == creator for group, name, _ in self._safe):
                    blocks[(tag.group, tag.element)] = creator
        return blocks

    def _private(self, ds: Dataset, element: DataElement, blocks: dict[tuple[int, int], str], report: Report) -> None:
        tag = element.tag
        if blocks:
            if 0x10 <= tag.element <= 0xFF and (tag.group, tag.element) in blocks:
                report.private_kept += 1
                return
            creator = blocks.get((tag.group, tag.element >> 8))
            if creator is not None and (tag.group, creator, tag.element & 0xFF) in self._safe:
                report.private_kept += 1
                return
        del ds[tag]
        report.private_removed += 1
        report.actions["X"] += 1
        report.rows.add("private")


def deidentifier_for(section: DeidentificationSection, name: str) -> Deidentifier:
    """The engine for profile ``name`` of the configuration's ``deidentification`` section, with
    the site key (ConfigError when either is missing)."""
    spec = section.profiles.get(name)
    if spec is None:
        known = ", ".join(sorted(section.profiles)) or "none"
        raise ConfigError(f"deidentification.profiles: no profile named {name!r} (known: {known})")
    if section.key_file is None:
        raise ConfigError("deidentification.key_file is not set: pseudonyms need the site secret")
    profile = Profile(name, frozenset(spec.options), spec.burned_in,
                      tuple(SafePrivate(int(s.group, 16), s.creator, int(s.element, 16)) for s in spec.safe_private))
    return Deidentifier(profile, PseudonymKey.from_file(section.key_file))


def _identifying_values(ds: Dataset) -> list[str]:
    """Strings that must not survive in a cleaned descriptor: every value of the identifying
    attributes (3 characters or more), and each part of a person name, longest first."""
    found: set[str] = set()
    for keyword in _IDENTIFYING:
        element = ds.get(keyword)
        value = element if not isinstance(element, DataElement) else element.value
        if value in (None, ""):
            continue
        for item in value if isinstance(value, MultiValue | list) else [value]:
            text = str(item).strip()
            if len(text) >= 3:
                found.add(text)
            if keyword.endswith("Name") or keyword.endswith("Names") or keyword in ("PhysiciansOfRecord",
                                                                                      "PerformingPhysicianName"):
                found.update(p for p in re.split(r"[\^=\s,]+", text) if len(p) >= 3)
    return sorted(found, key=len, reverse=True)


def clean_text(value: Any, needles: list[str]) -> Any:
    """``value`` (text, or several) with every identifying string in ``needles`` removed,
    case-insensitively; what is left keeps its meaning ('CT CHEST SMITH' -> 'CT CHEST')."""
    if isinstance(value, MultiValue | list):
        return [clean_text(v, needles) for v in value]
    text = str(value)
    for needle in needles:
        text = re.sub(re.escape(needle), "", text, flags=re.IGNORECASE)
    return re.sub(r"\s{2,}", " ", text).strip()
