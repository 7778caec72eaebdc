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
    text = _render("dicom_node.net.storage_scp")
    assert "Traceback (most recent call last)" in text


def test_json_lines_carry_the_identifiers_of_their_context() -> None:
    import json
    import threading

    from dicom_node.logs import JsonFormatter, bind_log_context, log_context

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("dicom_node.test_json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with log_context(job=7, job_key="ct:1.2:v1", series_uid="1.2", study_uid=""):
            logger.info("job %d done", 7)
            with log_context(peer="pacs"):
                logger.warning("delivery failed")
        logger.info("outside")

        def association() -> None:  # an association's own thread binds for the rest of it
            bind_log_context(association="127.0.0.1:5000", calling_ae="CT01")
            logger.info("stored")

        thread = threading.Thread(target=association)
        thread.start()
        thread.join()
        logger.info("main thread again", extra={"series_uid": "9.9"})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["message"], {k: r[k] for k in r if k not in ("time", "level", "logger", "pid", "message")}) for r in lines] == [
        ("job 7 done", {"series_uid": "1.2", "job": 7, "job_key": "ct:1.2:v1"}),
        ("delivery failed", {"series_uid": "1.2", "job": 7, "job_key": "ct:1.2:v1", "peer": "pacs"}),
        ("outside", {}),
        ("stored", {"association": "127.0.0.1:5000", "calling_ae": "CT01"}),
        ("main thread again", {"series_uid": "9.9"}),
    ]
    assert lines[1]["level"] == "WARNING" and lines[0]["logger"] == "dicom_node.test_json"
