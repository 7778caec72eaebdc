"""``dicom-node deidentify IN OUT --profile NAME`` (privacy/export.py), run as an operator runs it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pydicom
import yaml

from dicom_node.tools.synthetic import write_ct_series

from ..support import processes
from ..support.external_ai import add_identity, identity_found
from .test_reidentify import originals_of


def test_a_folder_is_exported_deidentified_with_a_summary_of_what_was_held_back(tmp_path: Path) -> None:
    source = tmp_path / "in"
    files = write_ct_series(source / "ct", 5, 32, 32, seed=41)
    for path in files:
        add_identity(path)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    burned = write_ct_series(source / "sc", 1, 32, 32, seed=42, study_uid=study_uid)
    add_identity(burned[0], {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "Modality": "OT"})
    (source / "notes.txt").write_text("not DICOM")
    key = tmp_path / "site.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"deidentification": {"key_file": str(key), "profiles": {
        "training": {"options": ["retain_longitudinal_modified_dates", "retain_patient_characteristics"]}}}}))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "deidentify", str(source), str(out),
               "--profile", "training"]
    result = processes.run(command, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "5 instance(s) de-identified by profile training" in result.stdout
    assert "held back: 1 instance(s): a secondary capture that does not say Burned In Annotation NO" in result.stdout
    assert "not DICOM or unreadable:" in result.stdout and "notes.txt" in result.stdout
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 5
    exported = [pydicom.dcmread(p) for p in written]
    assert identity_found(exported, originals_of(files)) == []
    # Named by pseudonymous UIDs: one study, one series, the instance's own UID as its file name.
    assert {p.parent.parent.name for p in written} == {str(exported[0].StudyInstanceUID)}
    assert all(p.stem == str(d.SOPInstanceUID) for p, d in zip(written, exported))
    assert {d.PatientSex for d in exported} == {"O"}  # Retain Patient Characteristics kept it
    # The same export again gives the same pseudonyms (a second batch joins the first).
    again = processes.run(command[:-3] + [str(tmp_path / "out2"), "--profile", "training"], timeout=120)
    assert again.returncode == 0
    assert sorted(p.relative_to(tmp_path / "out2") for p in (tmp_path / "out2").rglob("*.dcm")) == \
        sorted(p.relative_to(out) for p in written)

    inside = processes.run(command[:-3] + [str(source / "export"), "--profile", "training"], timeout=120)
    assert inside.returncode == 2 and "is inside IN" in inside.stderr
    unknown = processes.run(command[:-1] + ["nosuch"], timeout=120)
    assert unknown.returncode == 2 and "no profile named 'nosuch'" in unknown.stderr


def test_a_kept_uid_that_is_not_a_uid_never_names_a_path(tmp_path: Path) -> None:
    """With Retain UIDs the instance's own UIDs name its output path: one that is not a UID (here
    a path that climbs out of OUT) is refused and counted, never written."""
    from ..conftest import with_uids

    source = tmp_path / "in"
    [good] = write_ct_series(source / "ct", 1, 32, 32, seed=43)
    with_uids(good, source / "ct" / "bad.dcm", SOPInstanceUID="../../../escaped")
    key = tmp_path / "site.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"deidentification": {"key_file": str(key), "profiles": {
        "keep": {"options": ["retain_uids"]}}}}))
    out = tmp_path / "out"
    result = processes.run([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "deidentify", str(source),
                             str(out), "--profile", "keep"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 instance(s) de-identified" in result.stdout
    assert "bad.dcm" in result.stdout and "not a UID" in result.stdout
    assert [p.name for p in tmp_path.rglob("escaped*")] == []
    assert len(list(out.rglob("*.dcm"))) == 1
