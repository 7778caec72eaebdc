"""Drift per model version and scanner, on records with known shifts: a scanner whose series
suddenly lie farther from the training data and are declined more often drifts; a steady one
does not; too few records are not judged; the event is raised once per renotify period and
the gauges show the shift."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from dicom_node import counters
from dicom_node.config import MonitoringSection, NodeConfig
from dicom_node.monitoring.drift import DAY, check, measure
from dicom_node.storage.index import Index
from dicom_node.storage.inferences import Inference, Scanner, record

T0 = 1_700_000_000.0
SECTION = MonitoringSection(reference_days=30, window_days=7, min_records=20)


def _add(index: Index, scanner: Scanner, when: float, accepted: bool, distance: float, confidence: float | None) -> None:
    with index.transaction() as db:
        record(db, Inference(None, "k", "ct", "organs", "ct-organs", "2.0.0", "2.25.1", "1.2", "1.2.3",
                             "analysed" if accepted else "declined", accepted, distance, scanner,
                             confidence if accepted else None), when)


@pytest.fixture
def index(make_config: Callable[..., NodeConfig]) -> Index:
    config = make_config()
    index = Index(config.index.location)
    rng = np.random.default_rng(1)
    steady, upgraded = Scanner("ACME", "Scan 64"), Scanner("Other", "CT 2")
    for n in range(40):  # the reference window: days 0-20, both scanners alike
        when = T0 + n * 0.5 * DAY
        for scanner in (steady, upgraded):
            _add(index, scanner, when, rng.random() < 0.95, float(rng.normal(1.0, 0.2)), float(rng.normal(0.97, 0.005)))
    for n in range(30):  # the last week: the upgraded scanner's series drift away
        when = T0 + 90 * DAY + n * 0.2 * DAY
        _add(index, steady, when, rng.random() < 0.95, float(rng.normal(1.0, 0.2)), float(rng.normal(0.97, 0.005)))
        _add(index, upgraded, when, rng.random() < 0.55, float(rng.normal(2.6, 0.3)), float(rng.normal(0.90, 0.01)))
    _add(index, Scanner("Rare", "One"), T0, True, 1.0, 0.97)  # one record: not judged
    return index


NOW = T0 + 96.5 * DAY


def test_the_drifting_scanner_is_found_and_the_steady_one_not(index: Index) -> None:
    found = {d.scanner: d for d in measure(index, SECTION, NOW)}
    assert set(found) == {"ACME Scan 64", "Other CT 2", "Rare One"}
    steady, upgraded, rare = found["ACME Scan 64"], found["Other CT 2"], found["Rare One"]
    assert steady.judged and steady.reasons == ()
    assert upgraded.judged and len(upgraded.reasons) == 3, upgraded.reasons
    assert upgraded.shifts["distance_shift"] == pytest.approx(1.6, abs=0.25)
    assert upgraded.shifts["acceptance_drop"] == pytest.approx(0.4, abs=0.2)
    assert upgraded.shifts["confidence_drop"] == pytest.approx(0.07, abs=0.02)
    assert (upgraded.reference.count, upgraded.recent.count) == (40, 30)
    assert not rare.judged and rare.reasons == ()


def test_drift_is_announced_once_per_period_and_exported(index: Index) -> None:
    assert [d.scanner for d in check(index, SECTION, NOW)] == ["Other CT 2"]
    events = index.query("SELECT payload FROM events WHERE type = 'model.drift'")
    assert len(events) == 1 and "Other CT 2" in events[0]["payload"]
    check(index, SECTION, NOW + 3600)  # still drifting, an hour later: not announced again
    assert len(index.query("SELECT 1 FROM events WHERE type = 'model.drift'")) == 1
    check(index, SECTION, NOW + 25 * 3600)  # a day later: again
    assert len(index.query("SELECT 1 FROM events WHERE type = 'model.drift'")) == 2
    shift = counters.MODEL_DRIFT.labels("ct-organs", "2.0.0", "Other CT 2", "distance_shift")._value.get()
    assert shift == pytest.approx(1.6, abs=0.25)
    assert counters.MODEL_ACCEPTANCE.labels("ct-organs", "2.0.0", "ACME Scan 64")._value.get() > 0.8
