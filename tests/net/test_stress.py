"""Differential stress of both directions (stress.py says what is drawn and checked).

Each test draws a fresh seed (``DICOM_NODE_STRESS_SEED`` replays one) and prints it; a failure
names the seed, the association and what went wrong. The same plan then runs with the fast paths
off, and the statuses must be the same. ``scripts/stress_dimse.py`` runs the long version.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

from dicom_node.net.patches import pynetdicom_tuning

from ..conftest import Dcmtk, config_dict
from ..support import stress
from ..support.peers import start_node

# 120 associations per path in CI, as the before-stop check runs scripts/stress_dimse.py; STRESS_N=N for more.
ASSOCIATIONS = int(os.environ.get("STRESS_N", 120))
pytestmark = pytest.mark.slow


def _seed() -> int:
    seed = int(os.environ.get("DICOM_NODE_STRESS_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"\nstress seed {seed} (DICOM_NODE_STRESS_SEED={seed} replays it)")
    return seed


def test_listener_answers_every_request_of_every_sender(tmp_path: Path, dcmtk: Dcmtk,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    seed = _seed()
    pool = stress.make_templates(tmp_path / "templates")
    templates = [template for template, _ in pool]
    plans = stress.make_plans(pool, ASSOCIATIONS, seed)
    max_pdu = random.Random(seed).choice([16384, 1 << 20, 0])
    runs = {}
    for fast in (True, False):
        name = "fast" if fast else "pynetdicom"
        config = config_dict(tmp_path / name)
        config["node"].update(workers=2, fast_paths=fast, max_pdu_bytes=max_pdu, max_associations=16)
        node = start_node(tmp_path / name / "node", config)
        try:
            with stress.cpu_burner(enabled=fast):
                runs[fast] = stress.run_listener(plans, templates, node.port, tmp_path / name / "storage",
                                                 tmp_path / name / "work", dcmtk.storescu, seed=seed)
        finally:
            node.stop()
        log = (tmp_path / name / "node" / "node.log").read_text()
        assert stress.problems(runs[fast]) == [], f"seed {seed}, {name}, node max PDU {max_pdu}"
        assert stress.unexpected_lines(log) == [], f"seed {seed}, {name}"
        assert stress.requests(runs[fast]) >= ASSOCIATIONS
    assert stress.unexpected_lines(caplog.text) == [], f"seed {seed}: a sender in this process lost a response"
    assert stress.compare(runs[True], runs[False]) == [], f"seed {seed}: statuses differ between fast and pynetdicom paths"
    kinds = {plan.sender for plan in plans}
    assert kinds == {"raw", "pynetdicom", "storescu"}
    assert any(item.flaw for plan in plans for item in plan.items), "the plan drew no flawed request"


def test_node_sender_gets_every_response_from_every_receiver(tmp_path: Path, dcmtk: Dcmtk,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The node's own send path (results, forwarding) runs in the node's process, on the fast
    paths when they are on: it must read every response, whatever framing the receiver uses."""
    caplog.set_level(logging.WARNING)
    seed = _seed()
    pool = stress.make_templates(tmp_path / "templates")
    templates = [template for template, _ in pool]
    plans = stress.make_plans(pool, ASSOCIATIONS, seed, flaws=False)
    runs = {}
    try:
        for fast in (True, False):
            if fast:
                pynetdicom_tuning.install()
            else:
                pynetdicom_tuning.uninstall()
            name = "fast" if fast else "pynetdicom"
            receivers = stress.start_receivers(tmp_path / name, dcmtk.storescp, seed)
            try:
                with stress.cpu_burner(enabled=fast):
                    runs[fast] = stress.run_sender(plans, templates, receivers, tmp_path / name / "work")
            finally:
                receivers.stop()
            assert stress.problems(runs[fast]) == [], f"seed {seed}, {name}"
            assert receivers.raw.errors == [], f"seed {seed}, {name}"
    finally:
        pynetdicom_tuning.install()
    assert stress.unexpected_lines(caplog.text) == [], f"seed {seed}"
    assert stress.compare(runs[True], runs[False]) == [], f"seed {seed}"
    assert {plan.receiver for plan in plans} == {"raw", "storescp", "pynetdicom"}
