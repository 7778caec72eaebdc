"""Where the node's processes write their Prometheus counts (multiprocess mode); apart from
metrics.py because it must run before prometheus_client is imported."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_folder(folder: Path) -> None:
    """Make this process and the processes it starts count into ``folder`` (emptied: counts of
    an earlier run would otherwise be added to this one's). prometheus_client chooses its
    multiprocess mode when imported, so this runs first."""
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != str(folder):
        logging.getLogger(__name__).warning("prometheus_client was imported before the metrics folder was set: "
                                            "/metrics shows this process's counts only")
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(folder)
