"""The node as a DICOMweb client of one peer: STOW-RS (store), QIDO-RS (search), WADO-RS
(retrieve), through dicomweb-client over a ``requests`` session that signs in (auth.py).

dicomweb-client's own retries are off: the outbox retries deliveries (with its backoff and
dead letter) and a retrieval reports its failure to whoever asked. What a STOW-RS answer means
per instance is read here (PS3.18 10.5.3): 200 all stored; 202 some refused, named in the
Failed SOP Sequence with their Failure Reason; 409 none stored. Other 4xx answers will not get
better by sending again (bad credentials, a request the archive will not take); 408, 429, 5xx
and network errors may.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from ..config import Peer
from ..errors import PeerError
from .auth import auth_for

log = logging.getLogger(__name__)

#: QIDO-RS pages of this many matches, at most MAX_MATCHES in all (a query that big is a bad query).
PAGE = 500
MAX_MATCHES = 10_000

#: HTTP answers worth sending again later.
RETRIABLE = frozenset({408, 429, 500, 502, 503, 504})


@dataclass
class StowAnswer:
    """What a STOW-RS request did: instances stored, instances refused (with why: not to be
    sent again), and, when the request as a whole failed, why and whether it may be retried."""

    stored: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)
    error: str = ""
    retriable: bool = False


def _failure_reasons(answer: Dataset) -> dict[str, str]:
    """SOP Instance UID -> reason, from a STOW-RS response's Failed SOP Sequence."""
    refused = {}
    for item in answer.get("FailedSOPSequence", []):
        reason = item.get("FailureReason")
        refused[str(item.get("ReferencedSOPInstanceUID", ""))] = \
            f"refused by the archive, Failure Reason 0x{int(reason):04X}" if reason is not None else "refused by the archive"
    return refused


def _answer_dataset(response: requests.Response) -> Dataset:
    try:
        return Dataset.from_json(response.json()) if response.content else Dataset()
    except (ValueError, TypeError, KeyError):
        return Dataset()


class DicomwebPeerClient:
    """One DICOMweb peer, signed in as its ``dicomweb.auth`` says."""

    def __init__(self, peer: Peer) -> None:
        if peer.dicomweb is None:
            raise PeerError(f"{peer.name} has no dicomweb: service")
        self.peer = peer
        section = peer.dicomweb
        verify: str | bool = str(section.ca_certificates) if section.ca_certificates is not None else True
        self.session = requests.Session()
        self.session.auth = auth_for(section.auth, verify)
        self.session.verify = verify
        # A STOW-RS body goes as one piece (chunk_size above the batch cap): AWS signs the whole body.
        self.client = DICOMwebClient(section.root, session=self.session, timeout=section.timeout_seconds,
                                     chunk_size=section.max_batch_bytes * 2 + 2**20)
        self.client.set_http_retry_params(retry=False)
        self.reader = DICOMwebClient(section.root, session=self.session, timeout=section.timeout_seconds)
        self.reader.set_http_retry_params(retry=False)

    def close(self) -> None:
        self.session.close()

    def _describe(self, exc: Exception) -> str:
        return f"{self.peer.name} ({self.peer.dicomweb.url if self.peer.dicomweb else '?'}): {exc}"

    def store(self, datasets: Sequence[Dataset]) -> StowAnswer:
        """STOW-RS the datasets in one multipart/related request."""
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        try:
            answer = self.client.store_instances(list(datasets))
        except requests.HTTPError as exc:
            response = exc.response
            code = response.status_code if response is not None else 0
            body = _answer_dataset(response) if response is not None else Dataset()
            refused = _failure_reasons(body)
            if code == 409 or refused:
                return StowAnswer(refused={uid: refused.get(uid, f"refused by the archive (HTTP {code})") for uid in uids})
            text = (response.text[:200] if response is not None else "").strip()
            return StowAnswer(error=f"{self.peer.name} answered HTTP {code} {text}".strip(), retriable=code in RETRIABLE)
        except PeerError as exc:  # sign-in failed (token endpoint down, secret unreadable)
            return StowAnswer(error=str(exc), retriable=True)
        except (requests.RequestException, OSError) as exc:
            return StowAnswer(error=f"cannot reach {self._describe(exc)}", retriable=True)
        refused = _failure_reasons(answer)
        return StowAnswer(stored={uid for uid in uids if uid not in refused},
                          refused={uid: why for uid, why in refused.items() if uid in uids})

    def search_studies(self, filters: dict[str, Any], limit: int | None = None) -> list[Dataset]:
        """QIDO-RS /studies with attribute filters (keyword -> value); DICOM JSON as datasets."""
        return self._paged(lambda offset, size: self.reader.search_for_studies(
            search_filters=filters, limit=size, offset=offset), "StudyInstanceUID", limit)

    def search_series(self, study_uid: str, filters: dict[str, Any] | None = None) -> list[Dataset]:
        return self._paged(lambda offset, size: self.reader.search_for_series(
            study_uid, search_filters=filters or {}, limit=size, offset=offset), "SeriesInstanceUID")

    def _paged(self, page: Any, key: str, limit: int | None = None) -> list[Dataset]:
        """Every match, a page of PAGE at a time (``offset``), until a short page, a page of
        nothing new (an archive that ignores ``offset``), ``limit`` or MAX_MATCHES."""
        found: dict[str, Dataset] = {}
        while len(found) < (limit or MAX_MATCHES):
            size = min(PAGE, (limit or MAX_MATCHES) - len(found))
            batch = self._search(lambda: page(len(found), size))
            fresh = [ds for ds in batch if str(ds.get(key, "")) not in found]
            for ds in fresh:
                found[str(ds.get(key, ""))] = ds
            if len(batch) < size or not fresh:
                break
        return list(found.values())

    def _search(self, call: Any) -> list[Dataset]:
        try:
            return [Dataset.from_json(item) for item in call()]
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            raise PeerError(f"{self.peer.name} refused the query: HTTP {code}") from None
        except (requests.RequestException, OSError) as exc:
            raise PeerError(f"cannot reach {self._describe(exc)}") from None

    def iter_study(self, study_uid: str) -> Iterator[Dataset]:
        """WADO-RS the whole study, one instance at a time as the multipart answer streams in."""
        try:
            yield from self.reader.iter_study(study_uid)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            raise PeerError(f"{self.peer.name} refused to return study {study_uid}: HTTP {code}") from None
        except (requests.RequestException, OSError) as exc:
            raise PeerError(f"cannot reach {self._describe(exc)}") from None
        except pydicom.errors.InvalidDicomError as exc:
            raise PeerError(f"{self.peer.name} returned a part that is not DICOM: {exc}") from None

    def check(self) -> int:
        """One cheap authenticated QIDO-RS (a study, at most) to show the peer answers; returns
        how many studies it listed."""
        return len(self._search(lambda: self.reader.search_for_studies(limit=1, get_remaining=False)))
