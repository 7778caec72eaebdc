"""Processes the tests start, and what they said: a failing test's report carries the output of
every process it started (the node, the demo, Orthanc, PostgreSQL, DCMTK's tools, Chromium), so
a failure in CI is diagnosable from CI's log alone.

- :func:`run` runs a command to its end (``subprocess.run``, text captured) and remembers it;
- :func:`start` starts a long-running one with its output in a log file, and :func:`watch`
  registers one started elsewhere (a peer from peers.py, Orthanc or PostgreSQL from the tools);
- :func:`sections` is what the report gets when a test fails (conftest's
  ``pytest_runtest_makereport``): each process's command, exit status and the last lines it
  wrote; :func:`forget_runs` clears the commands that ran once a test is over.

Processes are stopped by the PID they were started with, nothing else."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.process import stop_process

#: The lines of each process's output a failure report shows (its end: where it went wrong).
TAIL_LINES = 80
_MAX_RUNS = 12


@dataclass
class Watched:
    """A long-running process and where its output goes."""

    name: str
    proc: subprocess.Popen[Any]
    log: Path | None = None
    #: For output that is not in one log file (Orthanc's, PostgreSQL's): returns the text.
    read: Callable[[], str] | None = None
    args: Sequence[str] = field(default_factory=list)

    def output(self) -> str:
        if self.read is not None:
            try:
                return self.read()
            except OSError as exc:
                return f"(its output could not be read: {exc})"
        if self.log is None:
            return "(its output was not kept)"
        try:
            return self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(its log {self.log} could not be read: {exc})"

    def describe(self) -> str:
        code = self.proc.poll()
        state = "still running" if code is None else f"exited with {code}"
        args = self.args or (self.proc.args if isinstance(self.proc.args, (list, tuple)) else [self.proc.args])
        command = " ".join(map(str, args))
        return f"pid {self.proc.pid}, {state}: {command}\n{tail(self.output())}"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop it (SIGTERM, then SIGKILL, by its PID). It stays watched until the test's report
        is made: a test that stops its processes in ``finally`` still shows what they said."""
        stop_process(self.proc, timeout)


_watched: list[Watched] = []
_runs: list[subprocess.CompletedProcess[str] | subprocess.TimeoutExpired] = []
_notes: list[tuple[str, Callable[[], str]]] = []


def tail(text: str | bytes | None, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``, saying how many came before."""
    if text is None:
        return "(nothing)"
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    kept = text.rstrip("\n").splitlines()
    if not kept:
        return "(nothing)"
    cut = len(kept) - lines
    return (f"[{cut} earlier lines]\n" if cut > 0 else "") + "\n".join(kept[-lines:])


def run(args: Sequence[str | os.PathLike[str]], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` with its output captured as text and remembered for the failure
    report; a timeout is an AssertionError carrying what the command wrote until then, and so is
    a non-zero exit with ``check=True``."""
    check = kwargs.pop("check", False)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        result = subprocess.run(list(args), timeout=timeout, **kwargs)  # noqa: PLW1510 - callers check the code
    except subprocess.TimeoutExpired as exc:
        _remember(exc)
        raise AssertionError(f"{_command(args)} ran past {timeout} s:\n{describe_run(exc)}") from exc
    _remember(result)
    if check and result.returncode != 0:
        raise AssertionError(f"a command failed:\n{describe_run(result)}")
    return result


def describe_run(result: subprocess.CompletedProcess[str] | subprocess.TimeoutExpired) -> str:
    """A finished command's exit status and the end of what it wrote, for a failure message."""
    code = f"exit {result.returncode}" if isinstance(result, subprocess.CompletedProcess) else f"killed after {result.timeout} s"
    return (f"{_command(_args_of(result))} ({code})\n--- stdout ---\n{tail(result.stdout)}\n"
            f"--- stderr ---\n{tail(result.stderr)}")


def start(args: Sequence[str | os.PathLike[str]], log: Path, name: str = "", **kwargs: Any) -> Watched:
    """Start ``args`` with stdout and stderr appended to ``log``, watched until stopped."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(map(str, args)), stdout=out, stderr=subprocess.STDOUT, **kwargs)
    return watch(proc, log=log, name=name or Path(str(args[0])).name)


def watch(proc: subprocess.Popen[Any], log: Path | None = None, name: str = "", read: Callable[[], str] | None = None) -> Watched:
    """Register a process started elsewhere, so a failing test shows its output."""
    watched = Watched(name or "process", proc, log, read, [str(a) for a in proc.args] if isinstance(proc.args, list) else [])
    _watched.append(watched)
    return watched


def unwatch(watched: Watched | subprocess.Popen[Any]) -> None:
    for item in list(_watched):
        if item is watched or item.proc is watched:
            _watched.remove(item)


def note(name: str, read: Callable[[], str]) -> None:
    """What a process the test drives through a library said (Chromium's console through
    playwright, say), read only if the test fails; forgotten when the test is over."""
    _notes.append((name, read))


def sections() -> list[tuple[str, str]]:
    """(title, text) of every watched process and of the commands run during the test."""
    found = [(f"process output: {w.name}", w.describe()) for w in _watched]
    for name, read in _notes:
        try:
            found.append((f"process output: {name}", tail(read())))
        except Exception as exc:  # noqa: BLE001 - a report must not fail for its extras
            found.append((f"process output: {name}", f"(could not be read: {exc})"))
    found += [(f"command output: {_command(_args_of(r))[:80]}", describe_run(r)) for r in _runs]
    return found


def forget_runs() -> None:
    """The test is over: its commands' output is not the next test's. Processes that have
    ended are dropped too (a fixture's that still run stay watched)."""
    _runs.clear()
    _notes.clear()
    for item in list(_watched):
        if item.proc.poll() is not None:
            _watched.remove(item)


def _remember(result: subprocess.CompletedProcess[str] | subprocess.TimeoutExpired) -> None:
    _runs.append(result)
    del _runs[:-_MAX_RUNS]


def _args_of(result: subprocess.CompletedProcess[str] | subprocess.TimeoutExpired) -> Any:
    return result.args if isinstance(result, subprocess.CompletedProcess) else result.cmd


def _command(args: Any) -> str:
    return " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
