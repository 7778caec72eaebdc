"""One bad input, one log line: the DICOM libraries' tracebacks are folded into their message;
the node's own unexpected errors keep their traceback."""

from __future__ import annotations

import io
import logging

from dicom_node.logs import OneLineLibraryErrors


def _render(name: str) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OneLineLibraryErrors())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            b"\xc4AE".decode("ascii")
        except UnicodeDecodeError as exc:
            logger.exception(exc)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue()


def test_library_tracebacks_become_one_line() -> None:
    text = _render("pynetdicom.utils")
    assert text.count("\n") == 1 and "Traceback" not in text
    assert "[UnicodeDecodeError: 'ascii' codec can't decode byte 0xc4" in text


def test_the_nodes_own_errors_keep_their_traceback() -> None:
    text = _render("dicom_node.scp")
    assert "Traceback (most recent call last)" in text
