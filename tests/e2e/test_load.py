"""Load, bounded for CI (scripts/load_test.py runs 8 x 500): 8 sender processes at once into
`dicom-node serve`, without and then with the ct-organs model running in the analysis worker;
nothing acknowledged is lost (every Success has its row and its file); more associations than
node.max_associations are refused (A-ASSOCIATE-RJ, local limit exceeded) across all listener
processes together, and counted in /metrics and the audit trail."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.load_test import run

pytestmark = pytest.mark.slow


def test_eight_senders_with_and_without_analysis_lose_nothing_and_the_limit_holds(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run(tmp_path, senders=8, instances=30, max_associations=10, log=lines.append)
    print("\n" + "\n".join(lines))
    for phase in result["phases"]:
        assert phase.sent == 240 and not phase.failed and not phase.lost, phase.report()
    assert (result["refused"], result["established"]) == (4, 0)
    assert result["counted"] >= 4 and result["audited"] >= 4
