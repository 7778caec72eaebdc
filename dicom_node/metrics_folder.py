"""Where the node's processes write their Prometheus counts (multiprocess mode); apart from
counters.py because it must run before prometheus_client is imported."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_folder(folder: Path) -> None:
    """Make this process and the processes it starts count into ``folder``, dropping the files
    of processes that no longer run (counts of an earlier run would otherwise be added to this
    one's). Files of live processes stay: with ``serve --role`` several node processes share the
    folder and start at any time, and emptying it under a running listener made its next count
    fail. prometheus_client chooses its multiprocess mode when imported, so this runs first."""
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != str(folder):
        logging.getLogger(__name__).warning("prometheus_client was imported before the metrics folder was set: "
                                            "/metrics shows this process's counts only")
        return
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.db"):
        if not _alive(path.stem.rsplit("_", 1)[-1]):
            path.unlink(missing_ok=True)
    os.environ[ENV] = str(folder)


def _alive(pid_text: str) -> bool:
    """Whether the process a metrics file belongs to (by the PID in its name) still runs."""
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True
