"""Log set-up shared by ``serve``, its listener processes and its analysis workers.

``logs.format: json`` writes one JSON object per line (time, level, logger, pid, message and
the identifiers of what the line is about: association, calling AE, study, series, SOP instance,
job, peer) for a log shipper; the identifiers come from :func:`log_context`, set where the work
is (an association's thread, a job, a delivery), so a line needs no change to carry them.

One bad input, one line: pynetdicom logs some decoding failures with a full traceback (a
non-ASCII AE title in an A-ASSOCIATE-RQ gives several, from ``utils.decode_bytes``), which in a
hospital's log reads like a crash. Records from the DICOM libraries keep their message and get
the exception's type and text appended instead of the traceback; the node's own unexpected
errors keep theirs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

#: What the current thread's log lines are about (contextvars: per thread, per task).
_CONTEXT: ContextVar[dict[str, Any]] = ContextVar("dicom_node_log_context", default={})
#: The identifiers a JSON line may carry, in this order.
FIELDS = ("association", "calling_ae", "called_ae", "study_uid", "series_uid", "sop_instance_uid", "job", "job_key",
          "route", "pipeline", "peer")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Lines logged inside carry ``fields`` (empty values are left out)."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in fields.items() if v not in (None, "")}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind_log_context(**fields: Any) -> None:
    """Set fields for the rest of this thread (an association's own thread)."""
    _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in fields.items() if v not in (None, "")}})


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        context = _CONTEXT.get()
        for key in FIELDS:
            value = getattr(record, key, None) or context.get(key)
            if value not in (None, ""):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)

#: Loggers whose tracebacks are folded into one line.
LIBRARIES = ("pynetdicom", "pydicom")


class OneLineLibraryErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.split(".")[0] in LIBRARIES:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} [{type(exc).__name__}: {exc}]"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def setup_logging(verbose: bool, with_pid: bool = False, json_lines: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) to stderr, as text or (``json_lines``) JSON; the libraries'
    chatter at WARNING unless verbose."""
    name = "%(name)s[%(process)d]" if with_pid else "%(name)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"%(asctime)s %(levelname)s {name}: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OneLineLibraryErrors) for f in handler.filters):
            handler.addFilter(OneLineLibraryErrors())
        if json_lines:
            handler.setFormatter(JsonFormatter())
    if not verbose:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # "skipped: maximum number of running instances reached" is the sender still busy
        # with a large delivery when its next tick comes: expected, not a problem.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # one line per copied module
