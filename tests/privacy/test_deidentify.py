"""The de-identification engine against every row of PS3.15 Table E.1-1 (privacy/deidentify.py)."""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dicom_node.privacy.deidentify import Deidentifier, Profile, SafePrivate, clean_text
from dicom_node.privacy.pseudonyms import PseudonymKey, shift_date
from dicom_node.privacy.table import OPTIONS, load_table

from ..support import processes

ROOT = Path(__file__).resolve().parents[2]
KEY = PseudonymKey(b"k" * 32)
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

_VALUES = {"AE": "STATION1", "AS": "045Y", "AT": 0x00100010, "CS": "VALUE1", "DA": "20200115", "DS": "1.5",
           "DT": "20200115101010", "FL": 1.5, "FD": 1.5, "IS": "7", "LO": "Long value Doe", "LT": "long text Doe",
           "OB": b"\x01\x02", "OD": b"\0" * 8, "OF": b"\0" * 4, "OL": b"\0" * 4, "OV": b"\0" * 8, "OW": b"\x01\x02",
           "PN": "Doe^John", "SH": "short", "SL": 1, "SS": 1, "ST": "short text Doe", "SV": 1, "TM": "101010",
           "UC": "uc", "UL": 1, "UN": b"\x01\x02", "UR": "http://example.org", "US": 1, "UT": "ut text Doe", "UV": 1}
#: Repeating-group and private rows: the element the test puts in for each.
_PATTERN_TAGS = {"50xxxxxx": (0x50003000, "OB"), "60xx3000": (0x60003000, "OW"), "60xx4000": (0x60004000, "LT")}


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "LO"  # newer than pydicom's dictionary


def every_row_dataset() -> tuple[Dataset, dict[int, object]]:
    """A CT instance holding an attribute for every row of the table (and a private block), with
    distinct UIDs; sequences hold one item with a name, a UID and a date. Returns the dataset and
    each top-level tag's original value."""
    ds = Dataset()
    originals: dict[int, object] = {}
    for number, row in enumerate(load_table().rows):
        if row.tag == "private" or row.tag.startswith("0002"):
            continue
        tag, vr = _PATTERN_TAGS.get(row.tag) or (int(row.tag, 16), _vr(int(row.tag, 16)))
        if vr == "SQ":
            item = Dataset()
            item.PatientName = "Nested^Name"
            item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.999.9{number}"
            item.ReferencedSOPClassUID = CTImageStorage
            value: object = Sequence([item])
        elif vr == "UI":
            value = f"1.2.826.0.1.3680043.10.999.{number}"
        elif vr in ("LO", "LT", "ST", "UT"):
            value = f"text {number} Doe"  # distinct, with a name part a clean must remove
        else:
            value = _VALUES[vr]
        ds.add(DataElement(tag, vr, value))
        originals[tag] = value
    ds.SOPClassUID = CTImageStorage  # its row: keep (not in the table)
    ds.PatientID = "MRN-12345"
    ds.PatientName = "Doe^John"
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "LO", "private secret")
    ds.add_new(0x00091002, "DS", "3.5")
    ds.add_new(0x00110010, "LO", "OTHER")
    ds.add_new(0x00111001, "LO", "other secret")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_CT"
    originals[0x00100020], originals[0x00100010] = "MRN-12345", "Doe^John"
    return ds, originals


def _empty(value: object) -> bool:
    return value in (None, "", b"") or (isinstance(value, Sequence) and len(value) == 0)


@pytest.mark.parametrize("options", [frozenset(), frozenset(OPTIONS) - {"retain_longitudinal_full_dates"},
                                     frozenset({"retain_longitudinal_full_dates", "retain_uids"})],
                         ids=["basic", "every-option-modified-dates", "full-dates-and-uids"])
def test_every_row_of_table_e1_1_gets_its_action(options: frozenset[str]) -> None:
    table = load_table()
    ds, originals = every_row_dataset()
    issuer = str(originals[0x00100021])  # Issuer of Patient ID is a row too: the pseudonym uses both
    pseudonym = KEY.patient_id("MRN-12345", issuer)
    shift = KEY.date_shift("MRN-12345", issuer)
    Deidentifier(Profile("t", options), KEY).apply(ds)
    checked = 0
    for row in table.rows:
        if row.tag == "private" or row.tag.startswith("0002"):
            continue
        tag = _PATTERN_TAGS[row.tag][0] if row.tag in _PATTERN_TAGS else int(row.tag, 16)
        action = table.action(row, options, tag, CTImageStorage)
        original, where = originals[tag], f"{row.tag} {row.name} ({row.basic} -> {action.code} {action.option})"
        if tag in (0x00100010, 0x00100020):  # emptied by the table, then the patient's pseudonym
            assert str(ds[tag].value).rstrip("^") == pseudonym, where
        elif action.code == "X" or (action.code == "C" and action.option == "clean_graphics"):
            assert tag not in ds, where
        elif action.code == "Z":
            assert tag in ds and _empty(ds[tag].value), where
        elif action.code == "K" and ds[tag].VR != "SQ":
            assert ds[tag].value == original, where
        elif action.code in ("U", "D") and ds[tag].VR == "UI":
            assert ds[tag].value == KEY.uid(str(original)), where
        elif action.code == "D" and ds[tag].VR != "SQ":
            assert not _empty(ds[tag].value) and ds[tag].value != original, where
        elif action.code == "C" and isinstance(original, bytes) and not isinstance(original, Sequence):
            assert tag not in ds, where  # binary content cannot be cleaned or shifted: removed
        elif action.code == "C" and action.option == "retain_longitudinal_modified_dates" and ds[tag].VR == "DA":
            assert ds[tag].value == shift_date(str(original), shift), where
        elif action.code == "C" and ds[tag].VR in ("LO", "LT", "ST", "UT"):
            assert "Doe" not in str(ds[tag].value) and str(ds[tag].value).strip(), where
        if tag in ds and ds[tag].VR == "SQ" and ds[tag].value:  # nested items went through the table too
            item = ds[tag].value[0]
            assert "PatientName" not in item or _empty(item.PatientName), where
            if "retain_uids" not in options:
                assert item.ReferencedSOPInstanceUID.startswith("2.25."), where
        checked += 1
    assert checked == len(table.rows) - 2  # every row but the private row and the file meta row (below)
    # What the instance declares.
    assert ds.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100"] + [OPTIONS[o][0] for o in OPTIONS if o in options]
    assert ds.LongitudinalTemporalInformationModified == (
        "UNMODIFIED" if "retain_longitudinal_full_dates" in options else
        "MODIFIED" if "retain_longitudinal_modified_dates" in options else "REMOVED")
    # The file meta follows the instance and loses the sender's title.
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    # Private attributes go (no safe list in these profiles).
    assert not any(e.tag.is_private for e in ds)
    for element in ds:
        if element.VR == "UI" and element.value:
            assert UID_RE.match(str(element.value)) and len(str(element.value)) <= 64


def test_well_known_rows_and_compound_codes_resolved_by_iod_type() -> None:
    table = load_table()
    ds, _ = every_row_dataset()
    ds.InstitutionName = "St. Elsewhere"
    ds.PatientBirthDate = "19600101"
    original_study = ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.999.1"
    Deidentifier(Profile("basic"), KEY).apply(ds)
    assert "InstitutionName" not in ds
    assert ds.PatientBirthDate in (None, "")
    assert ds.StudyInstanceUID == KEY.uid(original_study)
    assert ds.SOPClassUID == CTImageStorage  # not in the table: kept
    # Patient ID is Z/D: Type 2 in the CT IOD -> Z (then the pseudonym); Instance Creation Date is X/D,
    # Type 3 in CT -> removed.
    assert table.action(table.row(0x00100020), frozenset(), 0x00100020, CTImageStorage).code == "Z"
    assert table.action(table.row(0x00080012), frozenset(), 0x00080012, CTImageStorage).code == "X"
    # A compound row where some IOD makes the attribute Type 1 resolves to D there.
    types = table._types
    found = [(sop, tag) for sop, kinds in types.items() if sop != "*" for tag, kind in kinds.items()
             if kind == "1" and table.row(int(tag, 16)) and "D" in table.row(int(tag, 16)).basic.split("/")]
    assert found, "the type tables hold a Type 1 attribute with a compound code"
    sop, tag = found[0]
    assert table.action(table.row(int(tag, 16)), frozenset(), int(tag, 16), sop).code == "D"
    # An option's K beats the basic code; C from a clean option; K over C when both apply.
    study_date = table.row(0x00080020)
    assert table.action(study_date, frozenset({"retain_longitudinal_full_dates"}), 0x00080020, CTImageStorage).code == "K"
    assert table.action(study_date, frozenset({"retain_longitudinal_modified_dates"}), 0x00080020, CTImageStorage).code == "C"


def test_pseudonyms_are_consistent_per_site_and_unlinkable_across_sites() -> None:
    other = PseudonymKey(b"o" * 32)
    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    assert KEY.uid(uid) == KEY.uid(uid) != other.uid(uid)
    assert UID_RE.match(KEY.uid(uid)) and len(KEY.uid(uid)) <= 64
    assert KEY.patient_id("A") == KEY.patient_id("A") != KEY.patient_id("B")
    assert KEY.patient_id("A") != other.patient_id("A")
    assert KEY.patient_id("A", "HOSP1") != KEY.patient_id("A", "HOSP2")
    shift = KEY.date_shift("A")
    assert timedelta(days=-3650) <= shift <= timedelta(days=-1)
    with pytest.raises(Exception, match="at least 32"):
        PseudonymKey(b"short")


def test_a_key_file_is_read_byte_for_byte(tmp_path: Path) -> None:
    """``head -c 32 /dev/urandom`` may write whitespace bytes at either end: they are key, not
    padding (a CI run once lost one and refused a 32-byte key as 31)."""
    path = tmp_path / "site.key"
    secret = b"\n\t " + bytes(range(40, 66)) + b" \r\n"
    path.write_bytes(secret)
    path.chmod(0o600)
    assert PseudonymKey.from_file(path).uid("1.2.3") == PseudonymKey(secret).uid("1.2.3")
    path.write_bytes(b"x" * 31)
    with pytest.raises(Exception, match="31 bytes"):
        PseudonymKey.from_file(path)


def test_a_study_sent_twice_gets_the_same_uids_and_intervals_survive_modified_dates() -> None:
    engine = Deidentifier(Profile("long", frozenset({"retain_longitudinal_modified_dates"})), KEY)
    first = dcmread(get_testdata_file("CT_small.dcm"))
    again = dcmread(get_testdata_file("CT_small.dcm"))
    later = dcmread(get_testdata_file("CT_small.dcm"))
    later.StudyDate = "20040126"  # 7 days after CT_small's 20040119
    for ds in (first, again, later):
        engine.apply(ds)
    assert (first.StudyInstanceUID, first.SOPInstanceUID) == (again.StudyInstanceUID, again.SOPInstanceUID)
    from datetime import datetime

    days = (datetime.strptime(later.StudyDate, "%Y%m%d") - datetime.strptime(first.StudyDate, "%Y%m%d")).days
    assert days == 7 and first.StudyDate != "20040119"
    assert first.PatientID.startswith("PSEUDO-") and str(first.PatientName) == first.PatientID + "^"


def test_clean_descriptors_removes_identifying_values_and_keeps_the_rest() -> None:
    assert clean_text("CT chest DOE follow-up MRN-12345", ["MRN-12345", "Doe"]) == "CT chest follow-up"
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Smithson^Anna"
    ds.StudyDescription = "Abdomen SMITHSON anna contrast"
    Deidentifier(Profile("clean", frozenset({"clean_descriptors"})), KEY).apply(ds)
    assert ds.StudyDescription == "Abdomen contrast"
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyDescription = "Abdomen"
    Deidentifier(Profile("basic"), KEY).apply(ds)
    assert "StudyDescription" not in ds  # X without the option


def test_retain_safe_private_keeps_only_the_listed_elements() -> None:
    ds, _ = every_row_dataset()
    profile = Profile("safe", frozenset({"retain_safe_private"}), safe_private=(SafePrivate(0x0009, "ACME 1.0", 0x02),))
    report = Deidentifier(profile, KEY).apply(ds)
    private = {int(e.tag): e.value for e in ds if e.tag.is_private}
    assert private == {0x00090010: "ACME 1.0", 0x00091002: "3.5"}
    assert report.private_kept == 2 and report.private_removed == 3


@pytest.mark.parametrize("change, held", [
    ({"BurnedInAnnotation": "YES"}, "Burned In Annotation is YES"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "secondary capture"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.6.1", "Modality": "US"}, "ultrasound"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.6.1", "Modality": "US", "BurnedInAnnotation": "NO"}, None),
    ({}, None),
])
def test_instances_that_may_carry_burned_in_identity_are_held_back(change: dict, held: str | None) -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    verdict = Deidentifier(Profile("p"), KEY).check(ds)
    assert (verdict.reason if verdict else None) == held or (held and held in verdict.reason)
    assert Deidentifier(Profile("p", burned_in="send"), KEY).check(ds) is None


def test_profiles_refuse_unknown_and_conflicting_options() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        Profile("p", frozenset({"clean_pixel_data"}))
    with pytest.raises(ValueError, match="exclude each other"):
        Profile("p", frozenset({"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"}))
    with pytest.raises(ValueError, match="key_file"):
        Deidentifier(Profile("p"), None)


def test_the_committed_table_is_what_the_standards_parses_give() -> None:
    """The table is generated, not typed: regenerating it from the installed packages changes nothing."""
    result = processes.run([sys.executable, str(ROOT / "scripts" / "generate_deid_table.py"), "--check"],
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    table = load_table()
    assert len(table.rows) >= 650 and "2026c" in table.source["rows_and_basic_profile"]
