"""Outgoing DICOM: C-ECHO and C-STORE to a configured peer.

Files are sent as they are on disk (pynetdicom's chunked send: no decode, no re-encode), so
each file needs a presentation context with its own transfer syntax; a peer that refuses it
gets that file reported as failed with the reason, never silently skipped. TCP_NODELAY is set
on the association's socket: without it each small C-STORE waits ~40 ms on Nagle.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ..config import Peer
from ..errors import PeerError
from .patches.pynetdicom_settings import configure_sender
from .patches.pynetdicom_tuning import install_fixes

log = logging.getLogger(__name__)

#: pynetdicom allows at most 128 presentation contexts in one association request.
MAX_CONTEXTS = 128


def set_nodelay(assoc: Association) -> None:
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def associate(ae: AE, peer: Peer, tls: ssl.SSLContext | None = None) -> Association:
    """An established association with ``peer``, over TLS when the peer says ``tls: true``
    (``tls``: the node's client context, tls.client_context); PeerError says why not."""
    install_fixes()  # the exact send/reactor hand-over, in whichever process sends
    if not peer.has_dimse:
        raise PeerError(f"{peer.name} has no DIMSE address (host, port): it is reached by DICOMweb only")
    tls_args = None
    if peer.tls:
        if tls is None:
            raise PeerError(f"{peer.name} needs TLS (tls: true) and node.tls is not configured")
        tls_args = (tls, peer.server_hostname or peer.host)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise PeerError(f"{peer.name} ({peer.ae_title}@{peer.host}:{peer.port}) rejected the association")
        if assoc.is_aborted and assoc.acceptor.primitive is not None:
            # It answered A-ASSOCIATE-AC, but with no presentation context we proposed.
            raise PeerError(f"{peer.name} ({peer.ae_title}@{peer.host}:{peer.port}) accepted none of the encodings "
                            "offered (SOP class / transfer syntax)")
        raise PeerError(f"cannot reach {peer.name} ({peer.ae_title}@{peer.host}:{peer.port}): no association")
    set_nodelay(assoc)
    return assoc


def echo(local_ae_title: str, peer: Peer, timeout: float = 10.0, tls: ssl.SSLContext | None = None) -> int:
    """C-ECHO the peer; return its status (0x0000 is success). PeerError if unreachable."""
    ae = AE(ae_title=local_ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = associate(ae, peer, tls)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in status:
        raise PeerError(f"{peer.name} did not answer the C-ECHO")
    return int(status.Status)


@dataclass(frozen=True, slots=True)
class SendResult:
    path: Path
    status: int | None  # None: not sent (unreadable, no context, association lost)
    reason: str = ""
    unreachable: bool = False  # the peer could not be reached or refused the association

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status in (0x0000, 0xB000, 0xB006, 0xB007)


@dataclass
class SendReport:
    results: list[SendResult] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def failed(self) -> list[SendResult]:
        return [r for r in self.results if not r.ok]


def iter_dicom_candidates(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named directly, and every file under folders named (hidden ones skipped)."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not any(part.startswith(".") for part in child.relative_to(path).parts):
                    yield child
        else:
            yield path


def send_files(
    local_ae_title: str,
    peer: Peer,
    files: list[Path],
    on_result: Callable[[SendResult], None] | None = None,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> SendReport:
    """C-STORE every file to ``peer`` unchanged (over TLS to a ``tls`` peer, with ``tls`` the
    node's client context); report each file's outcome."""
    report = SendReport()

    def done(result: SendResult) -> None:
        report.results.append(result)
        if on_result is not None:
            on_result(result)

    readable: list[tuple[Path, str, str]] = []
    for path in files:
        try:
            meta = read_file_meta_info(path)
            readable.append((path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        except (InvalidDicomError, OSError, AttributeError, KeyError, ValueError) as exc:
            done(SendResult(path, None, f"not a DICOM Part 10 file: {exc}"))

    # One association per batch of at most 128 distinct (SOP class, transfer syntax) pairs.
    batches: list[list[tuple[Path, str, str]]] = []
    contexts: list[set[tuple[str, str]]] = []
    for item in readable:
        pair = (item[1], item[2])
        for batch, seen in zip(batches, contexts):
            if pair in seen or len(seen) < MAX_CONTEXTS:
                batch.append(item)
                seen.add(pair)
                break
        else:
            batches.append([item])
            contexts.append({pair})

    configure_sender()
    for batch, pairs in zip(batches, contexts):
        ae = AE(ae_title=local_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        for sop_class, ts in sorted(pairs):
            ae.add_requested_context(sop_class, ts)
        try:
            assoc = associate(ae, peer, tls)
        except PeerError as exc:
            for path, _, _ in batch:
                done(SendResult(path, None, str(exc), unreachable=True))
            continue
        try:
            accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
            for path, sop_class, ts in batch:
                if (sop_class, ts) not in accepted:
                    done(SendResult(path, None, f"{peer.name} does not accept transfer syntax {ts} for SOP class {sop_class}"))
                    continue
                if not assoc.is_established:
                    done(SendResult(path, None, "association lost before this file was sent"))
                    continue
                try:
                    status = assoc.send_c_store(path)
                except (OSError, ValueError, RuntimeError) as exc:
                    done(SendResult(path, None, f"send failed: {exc}"))
                    continue
                if "Status" in status:
                    code = int(status.Status)
                    comment = str(status.get("ErrorComment", ""))
                    done(SendResult(path, code, comment if code else ""))
                else:
                    done(SendResult(path, None, "no response (timeout or association aborted)"))
        finally:
            if assoc.is_established:
                assoc.release()
    return report
