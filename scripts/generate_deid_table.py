"""Generate dicom_node/privacy/table_e1_1.json from the standard's published Table E.1-1.

Nothing here is typed by hand: every row and action comes from machine-readable parses of
PS3.15 Annex E that installed packages ship (``pip install dicom-standard==0.1.0
dicom-anonymizer==2.1.0``, both in the project's test extra):

- **Rows and the Basic Profile column**: PS3.15 **2026c**, as dicom-anonymizer 2.1.0 (BSD)
  ships it (``dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py``: one list
  of tags per action code, parsed from the standard's Table E.1-1).
- **The option columns** (Retain Safe Private, Retain UIDs, Retain Device Identity, Retain
  Institution Identity, Retain Patient Characteristics, Retain Longitudinal Temporal
  Information with Full or Modified Dates, Clean Descriptors, Clean Structured Content, Clean
  Graphics) and the names: the parse innolitics' dicom-standard 0.1.0 (MIT) ships
  (``standard/confidentiality_profile_attributes.json``), made from the edition current in
  April 2020. dicom-anonymizer carries no option columns; a row added to the table since 2020
  therefore has its Basic Profile action under every option (the conservative reading: an
  option can only keep more, never less, and we keep nothing the newer table does not let us).
- **Attribute types per IOD** (to resolve compound codes such as X/Z or X/D): dicom-standard's
  module and CIOD tables (PS3.3, 2020): for each SOP Class, the strictest type of the
  attribute in the modules of its IOD.

Run ``python scripts/generate_deid_table.py`` to rewrite the table; ``--check`` exits 1 when the
committed file differs from what the installed packages give (tests/privacy runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from importlib import import_module
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "dicom_node" / "privacy" / "table_e1_1.json"

#: dicom-standard's option column -> the option's name in a profile (snake_case, as the issue and README say).
OPTION_COLUMNS = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}

#: dicom-anonymizer's list name -> the action code of Table E.1-1.
ANONYMIZER_LISTS = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
                    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}

COMPOUND = {"X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
_TYPE_RANK = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}


def _standard_folder() -> Path:
    for base in (Path(sys.prefix), Path(sys.base_prefix)):
        folder = base / "standard"
        if (folder / "confidentiality_profile_attributes.json").exists():
            return folder
    raise SystemExit("dicom-standard's data is not installed (pip install dicom-standard==0.1.0)")


def _pattern(tag: str) -> str:
    """'(60XX,3000)' -> '60xx3000'; group/element wildcards stay 'x'; the row of private
    attributes, '(GGGG,EEEE) WHERE GGGG IS ODD', is 'private'."""
    if "GGGG" in tag.upper():
        return "private"
    return tag.strip("()").replace(",", "").lower()


def _names_2026c() -> dict[str, str]:
    """pattern -> attribute name, from the comment dicom-anonymizer writes beside each tag
    (attributes newer than pydicom's dictionary have no other name here)."""
    module = import_module("dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c")
    source = Path(module.__file__).read_text()
    return {f"{int(g, 16):04x}{int(e, 16):04x}": name.strip() for g, e, name in
            re.findall(r"\(\s*(0x[0-9A-Fa-f]{4}),\s*(0x[0-9A-Fa-f]{4}),?\s*\),?\s*#\s*([^\n]+)", source)}


def _basic_2026c() -> dict[str, str]:
    """pattern -> Basic Profile action, from dicom-anonymizer's 2026c lists. Masked entries
    (group, element, group mask, element mask) become patterns with 'x' where the mask is 0."""
    module = import_module("dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c")
    actions: dict[str, str] = {}
    for name, code in ANONYMIZER_LISTS.items():
        for entry in getattr(module, name):
            if len(entry) == 2:
                pattern = f"{entry[0]:04x}{entry[1]:04x}"
            else:
                group, element, group_mask, element_mask = entry
                digits = f"{group:04x}{element:04x}"
                mask = f"{group_mask:04x}{element_mask:04x}"
                pattern = "".join(d if m == "f" else "x" for d, m in zip(digits, mask))
            actions[pattern] = code
    return actions


def _types(folder: Path, tags: set[str]) -> dict[str, dict[str, str]]:
    """SOP Class UID -> {tag: strictest type in its IOD} for the compound-code tags; '*' holds
    the strictest type over every IOD (used for SOP Classes newer than the 2020 tables)."""
    ciods = {c["name"]: c["id"] for c in json.loads((folder / "ciods.json").read_text())}
    modules_of: dict[str, set[str]] = {}
    for row in json.loads((folder / "ciod_to_modules.json").read_text()):
        modules_of.setdefault(row["ciodId"], set()).add(row["moduleId"])
    in_module: dict[str, dict[str, str]] = {}
    for row in json.loads((folder / "module_to_attributes.json").read_text()):
        parts = row["path"].split(":")
        if len(parts) == 2 and parts[1] in tags and row["type"] in _TYPE_RANK:
            in_module.setdefault(row["moduleId"], {})[parts[1]] = row["type"]

    def strictest(modules: set[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for module in sorted(modules):
            for tag, kind in in_module.get(module, {}).items():
                if tag not in found or _TYPE_RANK[kind] < _TYPE_RANK[found[tag]]:
                    found[tag] = kind
        return found

    result = {"*": strictest(set(in_module))}
    for sop in json.loads((folder / "sops.json").read_text()):
        ciod = ciods.get(sop["ciod"])
        if ciod is not None:
            result[sop["id"]] = strictest(modules_of.get(ciod, set()))
    return result


def build() -> dict:
    folder = _standard_folder()
    rows_2020 = {_pattern(r["tag"]): r for r in json.loads((folder / "confidentiality_profile_attributes.json").read_text())}
    basic = _basic_2026c()
    names = _names_2026c()

    rows = []
    for pattern in sorted(set(basic) | set(rows_2020)):
        old = rows_2020.get(pattern, {})
        name = old.get("name") or names.get(pattern, "")
        rows.append({
            "tag": pattern,
            "name": name or "",
            "basic": basic.get(pattern, old.get("basicProfile")),
            "options": {OPTION_COLUMNS[k]: v for k, v in sorted(old.items()) if k in OPTION_COLUMNS},
            "edition": "2026c" if pattern in basic else "2020",
        })
    compound = {r["tag"] for r in rows if r["basic"] in COMPOUND and "x" not in r["tag"]}
    return {
        "source": {
            "rows_and_basic_profile": "DICOM PS3.15 2026c Table E.1-1 (dicom-anonymizer 2.1.0, dicomfields_2026c)",
            "option_columns": "DICOM PS3.15 Table E.1-1 as of April 2020 (dicom-standard 0.1.0)",
            "iod_types": "DICOM PS3.3 module tables as of April 2020 (dicom-standard 0.1.0)",
            "private_attributes": "(gggg,eeee) with an odd group: X; C (kept when on the safe list) under retain_safe_private",
        },
        "rows": rows,
        "types": _types(folder, compound),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed table is not what the sources give")
    args = parser.parse_args(argv)
    text = json.dumps(build(), indent=0, sort_keys=True) + "\n"
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print("table_e1_1.json is " + ("what the sources give" if same else "NOT what the sources give: regenerate it"))
        return 0 if same else 1
    OUT.write_text(text)
    table = json.loads(text)
    print(f"{OUT}: {len(table['rows'])} rows, types for {len(table['types']) - 1} SOP Classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
