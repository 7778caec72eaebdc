"""`dicom-node routes` and `routes test PATH|STUDY_UID`: the rules one line each, and for files
or a study in the index which rules act and the condition that failed for the others."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread

from dicom_node.cli import main
from dicom_node.config import NodeConfig
from dicom_node.storage.index import Index
from dicom_node.tools.synthetic import write_ct_series

from .test_worker import index_series

PEERS = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
         {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 105, "send": False}]
ROUTES = [
    {"name": "thin-ct", "when": {"all": [{"attribute": "Modality", "equals": "CT"},
                                         {"attribute": "SliceThickness", "range": [None, 1.5]}]},
     "pipeline": "baseline", "on_match": "stop"},
    {"name": "ct", "when": {"attribute": "Modality", "equals": "CT"}, "pipeline": "baseline"},
    {"name": "from-pacs", "when": {"calling_ae": "PACS"}, "forward": ["archive"]},
    {"name": "rest", "fallback": True, "forward": ["archive"]},
    {"name": "two-phases", "trigger": "study", "forward": ["archive"],
     "when": {"attribute": "SeriesDescription", "regex": "phase", "ignore_case": True},
     "study": {"required_series": [{"attribute": "SeriesDescription", "regex": "arterial", "ignore_case": True},
                                   {"attribute": "SeriesDescription", "regex": "venous", "ignore_case": True}],
               "max_wait_seconds": 600}},
]


@pytest.fixture
def setup(tmp_path: Path, make_config: Callable[..., NodeConfig]) -> tuple[Path, NodeConfig, list[Path]]:
    config = make_config(peers=PEERS, routes=ROUTES, pipelines={"baseline": {"kind": "classical"}})
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    files = write_ct_series(tmp_path / "ct" / "arterial", 2, 16, 16, seed=1)
    for file in files:  # a 3 mm arterial phase: not thin
        ds = dcmread(file)
        ds.SliceThickness, ds.SeriesDescription = "3.0", "Arterial phase"
        ds.save_as(file)
    return path, config, files


def test_routes_lists_one_line_per_rule(setup: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, _ = setup
    assert main(["--config", str(path), "routes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "route thin-ct: series rule, when Modality equals 'CT' and SliceThickness is in [-inf, 1.5] -> analyse with "
        "baseline, results to sender, stop",
        "route ct: series rule, when Modality equals 'CT' -> analyse with baseline, results to sender",
        "route from-pacs: series rule, when calling_ae equals 'PACS' -> forward to archive",
        "route rest: fallback series rule, when always -> forward to archive",
        "route two-phases: study rule, waits for 2 required series (at most 600 s, then process), when "
        "SeriesDescription matches /phase/ (any case) -> forward to archive",
    ]


def test_routes_test_on_files_names_what_acts_and_what_failed(setup: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, files = setup
    assert main(["--config", str(path), "routes", "test", str(files[0].parent.parent), "--calling-ae", "PACS"]) == 0
    out = capsys.readouterr().out
    uid = dcmread(files[0]).SeriesInstanceUID
    assert out.splitlines() == [
        f"series {uid}: CT 'Arterial phase', 2 instance(s)",
        "  no       thin-ct: SliceThickness is '3.0', wanted: is in [-inf, 1.5]",
        "  ACTS     ct (analyse with baseline, results to sender): Modality equals 'CT'",
        "  ACTS     from-pacs (forward to archive): calling_ae equals 'PACS'",
        "  skipped  rest: fallback: another rule matched",
        "study rule two-phases (forward to archive):",
        "  trigger: study, required series, at most 600 s, then process",
        "  required: SeriesDescription matches /arterial/ (any case): present",
        "  required: SeriesDescription matches /venous/ (any case): MISSING",
        f"  would act on 1 of 1 series: {uid}",
    ]
    assert main(["--config", str(path), "routes", "test", str(files[0]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rules = {r["route"]: r for r in report["series"][0]["rules"]}
    assert (rules["from-pacs"]["holds"], rules["from-pacs"]["reason"]) == (False, "calling_ae is absent, wanted: equals 'PACS'")
    assert [r["route"] for r in report["series"][0]["rules"] if r["acts"]] == ["ct"]


def test_routes_test_on_a_study_in_the_index(setup: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    path, config, files = setup
    index = Index(config.index.path)
    index_series(index, files, calling_ae="PACS")
    index.close()
    study = str(dcmread(files[0]).StudyInstanceUID)
    assert main(["--config", str(path), "routes", "test", study]) == 0
    out = capsys.readouterr().out
    assert "ACTS     from-pacs (forward to archive): calling_ae equals 'PACS'" in out  # the calling AE the index recorded
    assert main(["--config", str(path), "routes", "test", "1.2.3.999"]) == 2
    assert "no DICOM series found for study 1.2.3.999" in capsys.readouterr().err


def test_the_readme_example_is_a_valid_configuration(make_config: Callable[..., NodeConfig]) -> None:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("### Routing rules", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    routes = yaml.safe_load(block)["routes"]
    config = make_config(peers=[*PEERS, {"name": "ct", "ae_title": "CT01", "host": "127.0.0.1", "port": 106}],
                         routes=[{**r, "forward": ["archive"]} if "forward" in r else r for r in routes],
                         pipelines={"ct-organs": {"kind": "model", "model": "ct-organs"}, "ct-baseline": {"kind": "classical"}})
    assert [r.name for r in config.routes] == ["localizers", "chest-ct", "liver-phases", "everything-else"]
    assert [r.stops for r in config.routes] == [True, True, False, False]


def test_deidentified_targets_are_named_with_their_profile(tmp_path: Path, make_config: Callable[..., NodeConfig],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "site.key"
    key.write_bytes(b"k" * 32)
    config = make_config(peers=PEERS, routes=[{"name": "external", "forward": [{"peer": "archive", "deidentify": "research"}],
                                               "destinations": ["pacs"]}],
                         deidentification={"key_file": str(key), "profiles": {"research": {}}})
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    assert main(["--config", str(path), "routes"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "route external: series rule, when always -> forward to archive (de-identified: research); results coming back to pacs"]
