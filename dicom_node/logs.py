"""Log set-up shared by ``serve`` and its listener processes.

One bad input, one line: pynetdicom logs some decoding failures with a full traceback (a
non-ASCII AE title in an A-ASSOCIATE-RQ gives several, from ``utils.decode_bytes``), which in a
hospital's log reads like a crash. Records from the DICOM libraries keep their message and get
the exception's type and text appended instead of the traceback; the node's own unexpected
errors keep theirs.
"""

from __future__ import annotations

import logging

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


def setup_logging(verbose: bool, with_pid: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) to stderr; the libraries' chatter at WARNING unless verbose."""
    name = "%(name)s[%(process)d]" if with_pid else "%(name)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"%(asctime)s %(levelname)s {name}: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OneLineLibraryErrors) for f in handler.filters):
            handler.addFilter(OneLineLibraryErrors())
    if not verbose:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # "skipped: maximum number of running instances reached" is the sender still busy
        # with a large delivery when its next tick comes: expected, not a problem.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # one line per copied module
