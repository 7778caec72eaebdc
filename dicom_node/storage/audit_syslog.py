"""The audit trail's copy at a security team's ATNA audit repository: RFC 5424 syslog messages
over TCP or TLS (RFC 5425 framing), sent from a queue by a thread of their own so a slow or
absent repository never holds up the node."""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

#: RFC 5424 PRI: facility 10 (security/authorization, authpriv), severity notice (5) or warning (4).
_PRI_NOTICE, _PRI_WARNING = 10 * 8 + 5, 10 * 8 + 4

log = logging.getLogger(__name__)


class SyslogSink:
    """RFC 5424 messages to the hospital's audit repository, over TCP or TLS with RFC 5425/6587
    octet-counting framing, from a thread of its own: the node never waits on it. A repository
    that is down is retried with backoff; at most ``queue_size`` messages wait (the file keeps
    every record regardless), more are dropped with one log line."""

    def __init__(self, config: Any, node_ae: str, queue_size: int = 10000) -> None:
        self.config = config
        self.app_name = (node_ae or "dicom-node").replace(" ", "_")[:48]
        self.hostname = socket.gethostname()[:255] or "-"
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queue_size)
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def send(self, message: dict[str, Any], warning: bool = False, msgid: str = "DICOM-AUDIT") -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        body = json.dumps(message, separators=(",", ":"))
        frame = (f"<{_PRI_WARNING if warning else _PRI_NOTICE}>1 {stamp} {self.hostname} {self.app_name} {os.getpid()} "
                 f"{msgid} - ").encode("utf-8") + b"\xef\xbb\xbf" + body.encode("utf-8")  # BOM: the MSG is UTF-8
        try:
            self._queue.put_nowait(f"{len(frame)} ".encode() + frame)
        except queue.Full:
            self._dropped += 1
            if self._dropped in (1, 100, 10000):
                log.error("Audit syslog: %d message(s) dropped, the repository at %s:%d is not keeping up (the audit "
                          "file has every record)", self._dropped, self.config.host, self.config.port)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.config.host, self.config.port), timeout=10)
        if self.config.transport == "tls":
            context = ssl.create_default_context(cafile=str(self.config.ca_certificates) if self.config.ca_certificates else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            return context.wrap_socket(sock, server_hostname=self.config.server_hostname or self.config.host)
        return sock

    def _frames(self) -> Iterator[bytes | None]:
        while True:
            yield self._queue.get()

    def _run(self) -> None:
        sock: socket.socket | None = None
        delay = 1.0
        for frame in self._frames():
            if frame is None:
                break
            while True:
                try:
                    if sock is None:
                        sock = self._connect()
                        delay = 1.0
                    sock.sendall(frame)
                    break
                except OSError as exc:
                    if sock is not None:
                        sock.close()
                        sock = None
                    log.warning("Audit syslog to %s:%d failed (%s); retrying in %.0f s", self.config.host, self.config.port,
                                exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 60.0)
        if sock is not None:
            sock.close()
