"""The failure report of a test that started processes carries what they said (conftest's
pytest_runtest_makereport with support/processes.py): a planted failing test is run by pytest
in a process of its own and its report is read."""

from __future__ import annotations

import sys
from pathlib import Path

from . import processes

ROOT = Path(__file__).resolve().parents[2]

PLANTED = '''
import sys
from tests.support import processes

def test_planted(tmp_path):
    processes.start([sys.executable, "-c", "print('the words the process said', flush=True)"], tmp_path / "p.log",
                    name="sayer").proc.wait(timeout=30)
    processes.run([sys.executable, "-c", "import sys; print('what the command printed'); sys.exit(3)"], timeout=30)
    assert False, "the planted failure"

def test_passes_after(tmp_path):
    assert True
'''


def test_a_failing_test_reports_its_processes_output(tmp_path: Path) -> None:
    (tmp_path / "test_planted.py").write_text(PLANTED)
    result = processes.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null", "-p",
                            "tests.conftest", "--rootdir", str(tmp_path), str(tmp_path / "test_planted.py")],
                           timeout=120, cwd=ROOT)
    out = result.stdout
    assert result.returncode == 1, processes.describe_run(result)
    assert "the planted failure" in out
    assert "process output: sayer" in out and "the words the process said" in out, out[-4000:]
    assert "what the command printed" in out and "(exit 3)" in out, out[-4000:]
    assert "1 failed, 1 passed" in out


def test_tail_keeps_the_end_and_counts_the_rest() -> None:
    text = "\n".join(f"line {n}" for n in range(200))
    kept = processes.tail(text, lines=5)
    assert kept.splitlines() == ["[195 earlier lines]", "line 195", "line 196", "line 197", "line 198", "line 199"]
    assert processes.tail("") == "(nothing)" and processes.tail(None) == "(nothing)"
