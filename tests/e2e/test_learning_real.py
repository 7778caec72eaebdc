"""Issue 29 on real data: the real abdomen CT with TotalSegmentator's labels, kept as a corrected
case, fine-tunes ct-organs (with rehearsed phantoms); the new card's domain admits that scan,
which the base card declines, its card says how little real data it saw, and it runs in shadow on
that scan while the active version still declines it. (Few steps here: the admission rests on
the domain statistics, not on training length; scripts/learn_from_real_scan.py trains longer
and prints the figures.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from threading import Event

import numpy as np
import pytest

from ai.finetune import finetune
from ai.registry import ModelRegistry
from ai.training import IGNORE
from ai.trust.gate import check
from dicom_node.config import NodeConfig
from dicom_node.flow.routing import route_completed
from dicom_node.flow.worker import Worker
from dicom_node.monitoring.records import RecordFilter, query
from dicom_node.monitoring.training_cases import load_case
from dicom_node.storage import model_versions
from dicom_node.storage.volume import gate_facts, load_series

from ..flow.test_worker import index_series
from ..support import real_scans
from ..support.real_cases import reference_case

pytestmark = pytest.mark.skipif(not real_scans.available(), reason="../shared/data/real-scans/ is not here")


def test_fine_tuned_on_the_real_abdomen_it_admits_it_and_runs_in_shadow(make_config: Callable[..., NodeConfig],
                                                                          tmp_path: Path) -> None:
    base = ModelRegistry().get("ct-organs")
    folder = reference_case(tmp_path / "cases" / "abdomen")
    case = load_case(folder, list(base.data.labels))
    assert case is not None and not (case.labels == IGNORE).any()  # every organ named: unlabelled is background
    assert {int(v) for v in np.unique(case.labels)} == {0, 1, 2, 3, 4, 5}
    source = load_series(sorted((folder / "source").iterdir()))
    assert not check(base.data.domain, gate_facts(source), source.volume).applicable
    result = finetune(base, [case], tmp_path / "ct-organs-2.1.0", steps=10, phantoms=6, evaluate_phantoms=0)
    card = result.card
    decision = check(card.data.domain, gate_facts(source), source.volume)
    assert decision.applicable, decision.reasons
    assert "1 corrected case(s) from this site" in card.data.limitations
    # Still declines what it does not know: an MR that says it is CT.
    mr = real_scans.nifti_volume("mr_abdomen_3mm.nii.gz", "MR")
    assert not check(card.data.domain, gate_facts(source), mr).applicable
    training = json.loads((card.folder / "training.json").read_text())
    assert training["held_out"] == [] and "not known" in training["evaluation"]["note"]

    config = make_config(routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": ["organs", "baseline"],
                                  "destinations": []}],
                         pipelines={"organs": {"kind": "model", "model": "ct-organs", "device": "cpu"},
                                    "baseline": {"kind": "classical"}},
                         results={"path": str(tmp_path / "results")})
    worker = Worker(config)
    try:
        model_versions.register(worker.index, card.name, card.version, card.folder)
        index_series(worker.index, real_scans.write_as_dicom("ct_abdomen_3mm.nii.gz", tmp_path / "abdomen", seed=9))
        route_completed(worker.index, config, now=1000)
        assert worker.run(Event(), burst=True) == 1
        rows = {(r["model"], r["model_version"], r["outcome"]): r for r in query(worker.index, RecordFilter())}
    finally:
        worker.close()
    assert ("ct-organs", "2.0.0", "declined") in rows  # the active version still declines the real scan
    assert ("ct-classical-baseline", "2.1.0", "analysed") in rows
    shadow = rows[("ct-organs", "2.1.0", "shadow")]
    assert shadow["gate_applicable"] and shadow["details"]["volumes_ml"], shadow["details"]
