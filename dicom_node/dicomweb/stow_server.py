"""The node's STOW-RS endpoint (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]`` and, for a
client that names itself, ``POST /dicomweb/{client}/studies[/{study}]``.

Who may push: peers with ``stow: true``, each signing in with its own bearer token (read from
its ``stow_token_file``); anyone else gets 401 before a byte of the body is read. What they push
is recorded under the client's AE title, so routing rules, the index and the audit trail see
the client as they see a calling AE.

The same durability contract as C-STORE (storage/ingest.py): the body is streamed part by part
into files in the store's ``.incoming`` folder (memory stays bounded whatever its size), and
only once the whole body has arrived is each part made durable and indexed; then the answer
says, per instance, stored or refused with its Failure Reason. A body that stops part-way (the
client went away, a malformed multipart, over the size limit) leaves nothing stored.

    200  every instance stored            202  some refused (Failed SOP Sequence)
    409  none stored                      400  not a multipart body, or a broken one
    401  no or wrong token                413  the body or an instance over its limit
    415  not multipart/related application/dicom
"""

from __future__ import annotations

import hmac
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anyio import to_thread
from pydicom.dataset import Dataset
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .. import counters
from ..config import NodeConfig, Peer
from ..errors import DiskFullError, IndexError_, InvalidInstanceError, PeerError, StoreError
from ..storage.audit import AuditLog
from ..storage.events import emit_alert
from ..storage.header import read_header
from ..storage.index import Index, Outcome, Receipt
from ..storage.ingest import ingest
from ..storage.store import InstanceStore
from .auth import read_secret

log = logging.getLogger(__name__)

#: Failure Reasons (PS3.18 Table I.2-?; the codes C-STORE uses).
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
STUDY_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


@dataclass
class _Part:
    """One part of the body as it streams to disk."""

    path: Path
    handle: Any
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    refused: str = ""  # why this part is not taken, found while it arrived (its size)


@dataclass
class _Outcome:
    stored: list[tuple[str, str]] = field(default_factory=list)  # (SOP Class, SOP Instance)
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)  # + Failure Reason, why
    duplicates: int = 0
    bytes: int = 0
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)


class StowError(Exception):
    """The request as a whole is refused: an HTTP status and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _BodyReader:
    """Feeds the body to python-multipart's streaming parser, each part into its own file."""

    def __init__(self, boundary: bytes, incoming: Path, max_instance_bytes: int) -> None:
        self.incoming = incoming
        self.max_instance_bytes = max_instance_bytes
        self.parts: list[_Part] = []
        self.ended = False
        self._field = b""
        self._value = b""
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_end": self._finished,
        })

    def _begin(self) -> None:
        path = self.incoming / f".stow.{uuid.uuid4().hex}.part"
        self.parts.append(_Part(path, open(path, "wb")))  # noqa: SIM115 - closed at the part's end or by discard()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self.parts[-1].headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.size += end - start
        if part.refused:
            return
        if part.size > self.max_instance_bytes:
            part.refused = f"instance over the limit of {self.max_instance_bytes} bytes"
            part.handle.truncate(0)
            return
        part.handle.write(data[start:end])

    def _end(self) -> None:
        self.parts[-1].handle.close()

    def _finished(self) -> None:
        self.ended = True

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError as exc:
            raise StowError(400, f"the body is not a well-formed multipart message: {exc}") from None
        except OSError as exc:
            raise StowError(507 if exc.errno == 28 else 500, f"cannot write the body to disk: {exc.strerror}") from None

    def discard(self) -> None:
        """Remove every part's file (whatever was taken in was moved away before)."""
        for part in self.parts:
            try:
                part.handle.close()
                part.path.unlink(missing_ok=True)
            except OSError:
                pass


class StowEndpoint:
    """The STOW-RS handler the web app mounts (app.py)."""

    def __init__(self, config: NodeConfig, index: Index, store: InstanceStore, audit: AuditLog | None) -> None:
        self.config = config
        self.index = index
        self.store = store
        self.audit = audit
        self.limits = config.web

    # -- who is calling ------------------------------------------------------------------

    def client_for(self, request: Request) -> Peer:
        """The STOW-RS client whose token the request carries (and whose path it used, if any)."""
        header = request.headers.get("authorization", "")
        given = header[7:].strip().encode() if header.lower().startswith("bearer ") else b""
        named = request.path_params.get("client")
        for peer in self.config.stow_clients():
            if named is not None and peer.name != named:
                continue
            assert peer.stow_token_file is not None
            try:
                expected = read_secret(peer.stow_token_file, "STOW-RS token").encode()
            except PeerError as exc:
                log.error("STOW-RS client %s cannot sign in: %s", peer.name, exc)
                continue
            if given and hmac.compare_digest(given, expected):
                return peer
        raise StowError(401, "a STOW-RS client's bearer token is required" if not given
                        else "that token is not a STOW-RS client's" + (f" (for {named})" if named else ""))

    # -- the request ---------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        started = time.monotonic()
        address = request.client.host if request.client else "?"
        port = request.client.port if request.client else 0
        try:
            client = self.client_for(request)
        except StowError as exc:
            log.warning("STOW-RS from %s refused (%d): %s", address, exc.status, exc)
            emit_alert(self.index, "security.alert", f"stow_refused:{address}",
                       {"alert": "stow_refused", "address": address, "reason": str(exc)})
            if self.audit is not None:
                self.audit.write("association", outcome="rejected", reason=f"STOW-RS: {exc}", protocol="STOW-RS",
                                 address=address, port=port, calling_ae="", called_ae=self.config.node.ae_title)
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers={"WWW-Authenticate": "Bearer"})
        try:
            parts = await self._receive(request)
        except StowError as exc:
            log.warning("STOW-RS from %s (%s) refused (%d): %s", client.name, address, exc.status, exc)
            self._audit(client, address, port, "refused", _Outcome(), started, reason=str(exc))
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except ClientDisconnect:
            log.warning("STOW-RS from %s (%s): the client went away before the body ended; nothing stored",
                        client.name, address)
            self._audit(client, address, port, "aborted", _Outcome(), started, reason="client disconnected mid-body")
            return Response(status_code=400)
        try:
            outcome = await to_thread.run_sync(self._take, parts, client, address, request.path_params.get("study"))
        finally:
            for part in parts:
                part.path.unlink(missing_ok=True)
        self._audit(client, address, port, "released", outcome, started)
        log.info("STOW-RS from %s (%s): %d stored, %d duplicate, %d refused", client.name, address,
                 len(outcome.stored) - outcome.duplicates, outcome.duplicates, len(outcome.failed))
        return self._answer(outcome)

    async def _receive(self, request: Request) -> list[_Part]:
        """The body's parts, each whole in a file (StowError or ClientDisconnect: none kept)."""
        media, options = parse_options_header(request.headers.get("content-type", ""))
        kind = options.get(b"type", b"").decode("latin-1").lower()
        if media != b"multipart/related" or kind not in ("application/dicom", ""):
            raise StowError(415, "STOW-RS takes multipart/related; type=\"application/dicom\" (got "
                                 f"{request.headers.get('content-type', 'no Content-Type')[:80]})")
        boundary = options.get(b"boundary")
        if not boundary:
            raise StowError(400, "the multipart/related Content-Type has no boundary")
        try:
            length = int(request.headers.get("content-length", "0") or 0)
        except ValueError:
            raise StowError(400, "Content-Length is not a number") from None
        limit = self.limits.stow_max_request_bytes
        if length > limit:
            raise StowError(413, f"request body over {limit} bytes")
        reader = _BodyReader(boundary, self.store.incoming, self.limits.stow_max_instance_bytes)
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise StowError(413, f"request body over {limit} bytes")
                reader.write(chunk)
            if not reader.ended:
                raise StowError(400, "the multipart body ended before its closing boundary")
            if not reader.parts:
                raise StowError(400, "the multipart body has no parts")
        except BaseException:
            reader.discard()
            raise
        return reader.parts

    def _take(self, parts: list[_Part], client: Peer, address: str, study: str | None) -> _Outcome:
        """Make each part durable and indexed (storage/ingest.py), or say why not."""
        outcome = _Outcome()
        for part in parts:
            sop_class, sop_instance = "", ""
            try:
                media = part.headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
                if media != "application/dicom":
                    raise InvalidInstanceError(f"a part of type {media[:40]!r}: only application/dicom is taken")
                if part.refused:
                    raise _Refused(OUT_OF_RESOURCES, part.refused)
                header = read_header(part.path)
                sop_class, sop_instance = header.sop_class_uid, header.sop_instance_uid
                if study is not None and header.study_instance_uid != study:
                    raise _Refused(STUDY_MISMATCH, f"study {header.study_instance_uid}, not {study} as the URL says")
                receipt = Receipt(calling_ae=client.ae_title, called_ae=self.config.node.ae_title, peer_address=address,
                                  received_at=time.time())
                taken = ingest(self.store, self.index, part.path, receipt, header=header)
            except _Refused as exc:
                outcome.failed.append((sop_class, sop_instance, exc.code, str(exc)))
            except InvalidInstanceError as exc:
                outcome.failed.append((sop_class, sop_instance, CANNOT_UNDERSTAND, str(exc)))
            except DiskFullError as exc:
                outcome.failed.append((sop_class, sop_instance, OUT_OF_RESOURCES, str(exc)))
            except (StoreError, IndexError_) as exc:
                outcome.failed.append((sop_class, sop_instance, PROCESSING_FAILURE, str(exc)))
            except Exception as exc:  # noqa: BLE001 - one part must not lose the others' answers
                log.exception("STOW-RS: unexpected error taking a part from %s", client.name)
                outcome.failed.append((sop_class, sop_instance, PROCESSING_FAILURE, f"unexpected error: {exc}"))
            else:
                outcome.stored.append((sop_class, sop_instance))
                outcome.duplicates += taken.outcome is Outcome.DUPLICATE
                outcome.bytes += taken.size
                counters.INSTANCES_RECEIVED.labels(client.ae_title).inc()
                counters.BYTES_RECEIVED.labels(client.ae_title).inc(taken.size)
                entry = outcome.studies.setdefault(taken.header.study_instance_uid,
                                                   {"patient_id": taken.header.patient_id, "sop_classes": {}})
                entry["sop_classes"][sop_class] = entry["sop_classes"].get(sop_class, 0) + 1
                continue
            counters.INSTANCES_REFUSED.labels(client.ae_title, f"0x{outcome.failed[-1][2]:04X}").inc()
            log.error("STOW-RS from %s: refused %s with 0x%04X: %s", client.name, sop_instance or "a part",
                      outcome.failed[-1][2], outcome.failed[-1][3])
        return outcome

    def _answer(self, outcome: _Outcome) -> Response:
        answer = Dataset()
        if outcome.stored:
            answer.ReferencedSOPSequence = [_reference(c, i) for c, i in outcome.stored]
        if outcome.failed:
            answer.FailedSOPSequence = [_reference(c, i, reason) for c, i, reason, _ in outcome.failed]
        status = 200 if not outcome.failed else 202 if outcome.stored else 409
        warnings = [f'299 dicom-node "{i or "part"}: {why[:160]}"'.replace("\n", " ") for _, i, _, why in outcome.failed[:20]]
        response = Response(answer.to_json(), status_code=status, media_type="application/dicom+json")
        for warning in warnings:
            response.headers.append("Warning", warning)
        return response

    def _audit(self, client: Peer, address: str, port: int, state: str, outcome: _Outcome, started: float,
               reason: str = "") -> None:
        if self.audit is None:
            return
        fields: dict[str, Any] = {
            "outcome": state, "protocol": "STOW-RS", "peer": client.name, "calling_ae": client.ae_title,
            "called_ae": self.config.node.ae_title, "address": address, "port": port,
            "instances_stored": len(outcome.stored) - outcome.duplicates, "instances_duplicate": outcome.duplicates,
            "instances_failed": len(outcome.failed), "bytes": outcome.bytes,
            "duration_s": round(time.monotonic() - started, 3), "pid": os.getpid()}
        if reason:
            fields["reason"] = reason
        if outcome.failed:
            fields["failures"] = [f"{i}: 0x{code:04X} {why}" for _, i, code, why in outcome.failed[:20]]
        if outcome.studies:
            fields["studies"] = [{"study_uid": uid, **study} for uid, study in outcome.studies.items()]
        self.audit.write("association", **fields)


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _reference(sop_class: str, sop_instance: str, failure: int | None = None) -> Dataset:
    item = Dataset()
    if sop_class:
        item.ReferencedSOPClassUID = sop_class
    if sop_instance:
        item.ReferencedSOPInstanceUID = sop_instance
    if failure is not None:
        item.FailureReason = failure
    return item
