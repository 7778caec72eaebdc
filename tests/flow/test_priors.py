"""A route's priors (flow/priors.py): found on the source by patient, modality and body part,
newest first, retrieved into the node and held from the rules; and handed to a command module
each in its own folder (pipelines/command.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from dicom_node.config import NodeConfig, PriorsSpec
from dicom_node.errors import PeerError
from dicom_node.flow.priors import fetch_priors, find_priors
from dicom_node.flow.requests import held_studies
from dicom_node.pipelines.command import CommandPipeline
from dicom_node.storage.index import Index
from dicom_node.storage.store import InstanceStore
from dicom_node.storage.volume import load_series
from dicom_node.tools.orthanc import find_orthanc
from dicom_node.tools.synthetic import write_ct_series
from tests.support.qr_peers import start_qr_orthanc

MODULES = Path(__file__).parents[1] / "support" / "modules"


def _study(folder: Path, seed: int, patient: str, date: str, modality: str = "CT", body_part: str = "CHEST",
           slices: int = 3) -> tuple[list[Path], str]:
    files = write_ct_series(folder, slices, rows=32, columns=32, seed=seed, patient_id=patient)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyDate, ds.StudyTime, ds.Modality, ds.BodyPartExamined = date, "120000", modality, body_part
        ds.save_as(path)
    return files, str(pydicom.dcmread(files[0]).StudyInstanceUID)


@pytest.mark.skipif(find_orthanc() is None, reason="needs orthanc")
def test_priors_are_found_newest_first_retrieved_and_held(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    orthanc = start_qr_orthanc(tmp_path / "orthanc", "AI_NODE", 1)
    try:
        current, current_uid = _study(tmp_path / "now", 1, "P1", "20261201")
        _, older = _study(tmp_path / "2024", 2, "P1", "20240101")
        _, newer = _study(tmp_path / "2025", 3, "P1", "20250101", body_part="ABDOMEN")
        _, mr = _study(tmp_path / "mr", 4, "P1", "20260601", modality="MR")
        _study(tmp_path / "other", 5, "P2", "20260101")
        for folder in ("now", "2024", "2025", "mr", "other"):
            for path in sorted((tmp_path / folder).glob("*.dcm")):
                orthanc.upload(path)
        config = make_config(peers=[{"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                                     "port": orthanc.port, "query": True, "retrieve": "get"}])
        header = pydicom.dcmread(current[0], stop_before_pixels=True)
        peer = config.peer("pacs")
        found = find_priors(config, peer, PriorsSpec(count=2), header)
        assert [str(s.StudyInstanceUID) for s in found] == [newer, older]  # newest first; the MR and P2 left out
        def uids(spec: PriorsSpec) -> list[str]:
            return [str(s.StudyInstanceUID) for s in find_priors(config, peer, spec, header)]
        assert uids(PriorsSpec(count=2, match="both")) == [older]  # the ABDOMEN CT is not a CHEST prior
        assert uids(PriorsSpec(count=3, match="body_part")) == [mr, older]  # any modality of the chest
        index, store = Index(config.index.location), InstanceStore(config.storage.path)
        try:
            priors = fetch_priors(config, index, store, PriorsSpec(count=2), header, orthanc.ae_title)
            assert [(p.study_uid, p.study_date, len(p.files)) for p in priors] == [(newer, "20250101", 3),
                                                                                 (older, "20240101", 3)]
            assert all(f.exists() for p in priors for f in p.files)
            with index.transaction() as db:
                assert held_studies(db, {newer, older, current_uid}) == {newer, older}  # never routed as new studies
            # Held already: not retrieved again.
            again = fetch_priors(config, index, store, PriorsSpec(count=1), header, orthanc.ae_title)
            assert [p.study_uid for p in again] == [newer]
            assert index.query("SELECT count(*) AS n FROM requests WHERE origin = 'prior'")[0]["n"] == 2
            # No priors.source and a sender that may not be queried: the job fails with why.
            with pytest.raises(PeerError, match="not a peer with query: true"):
                fetch_priors(config, index, store, PriorsSpec(count=1), header, "SOMEONE")
        finally:
            index.close()
    finally:
        orthanc.stop()


def test_a_command_module_gets_each_prior_in_its_own_folder(tmp_path: Path, make_config: Callable[..., NodeConfig],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    current, _ = _study(tmp_path / "now", 1, "P1", "20261201", slices=8)
    prior_a, uid_a = _study(tmp_path / "a", 2, "P1", "20250101")
    prior_b, uid_b = _study(tmp_path / "b", 3, "P1", "20240101", slices=2)
    record = tmp_path / "record.json"
    monkeypatch.setenv("PRIORS_RECORD", str(record))
    config = make_config(pipelines={"with-priors": {"kind": "command", "command": [sys.executable, str(MODULES / "priors_module.py")],
                                                    "domain": {"modality": ["CT"]}}})
    pipeline = CommandPipeline("with-priors", config.pipelines["with-priors"], tmp_path / "work")
    output = pipeline.run_series(load_series(current), current, "job-p", tmp_path / "kept",
                                 priors=[(uid_a, "20250101", prior_a), (uid_b, "20240101", prior_b)])
    assert output.findings is not None
    seen = json.loads(record.read_text())
    assert [(p["rank"], p["study_uid"], p["study_date"], p["files"], p["files_in_folder"], p["studies_in_folder"])
            for p in seen["priors"]] == [(1, uid_a, "20250101", 3, 3, [uid_a]), (2, uid_b, "20240101", 2, 2, [uid_b])]
    assert seen["priors_dir"] and all(p["folder"].startswith(seen["priors_dir"]) for p in seen["priors"])
    # Without priors, task.json still lists them: none.
    pipeline.run_series(load_series(current), current, "job-q", tmp_path / "kept2")
    assert json.loads(record.read_text()) == {"priors": [], "priors_dir": ""}


def test_priors_need_a_command_pipeline_and_a_query_peer(make_config: Callable[..., NodeConfig]) -> None:
    from dicom_node.errors import ConfigError

    with pytest.raises(ConfigError, match="priors are handed to command pipelines only"):
        make_config(routes=[{"name": "ct", "pipeline": "baseline", "priors": {"count": 1}}],
                    pipelines={"baseline": {"kind": "classical"}})
    with pytest.raises(ConfigError, match="priors.source 'nobody' is not a peer with query: true"):
        make_config(routes=[{"name": "ct", "pipeline": "m", "priors": {"source": "nobody"}}],
                    pipelines={"m": {"kind": "command", "command": ["true"], "domain": {"modality": ["CT"]}}})
