"""The node's configuration: one YAML file, validated into typed models.

Operators script against these key names, so they are stable and documented in README.md.
A bad file raises :class:`ConfigError` whose message names the key and what is wrong, so the
node refuses to start instead of running half-configured.

Relative paths in the file are resolved against the current working directory, as the
README's commands run the node from the repository root.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import string
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .rules import AllOf, AttributeCondition, Condition, ContextCondition, CountCondition, RuleError, TextTest, parse_condition

#: Where the configuration comes from when no ``--config`` is given.
CONFIG_ENV_VAR = "DICOM_NODE_CONFIG"
DEFAULT_CONFIG_PATH = Path("config/node.yaml")

#: Environment variables that override the common keys (documented in README.md).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "DICOM_NODE_AE_TITLE": ("node", "ae_title"),
    "DICOM_NODE_HOST": ("node", "host"),
    "DICOM_NODE_PORT": ("node", "port"),
    "DICOM_NODE_STORAGE_PATH": ("storage", "path"),
    "DICOM_NODE_DURABILITY": ("storage", "durability"),
    "DICOM_NODE_INDEX_PATH": ("index", "path"),
    "DICOM_NODE_AUDIT_PATH": ("audit", "path"),
}

_AE_TITLE_FORBIDDEN = set("\\")


def _check_ae_title(value: str) -> str:
    """AE titles are 1-16 characters of the default repertoire, no backslash, not all spaces."""
    title = value.strip()
    if not title:
        raise ValueError("an AE title must not be empty")
    if len(title) > 16:
        raise ValueError(f"an AE title has at most 16 characters, {title!r} has {len(title)}")
    if any(ch in _AE_TITLE_FORBIDDEN or not (32 <= ord(ch) < 127) for ch in title):
        raise ValueError(f"an AE title uses printable ASCII without backslash, got {title!r}")
    return title


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Durability(str, Enum):
    """How hard the store works before a C-STORE is acknowledged.

    ``fsync``: file and directory entry are fsynced, so an acknowledged instance survives a
    power cut. ``none``: written and renamed but left to the OS cache; survives a crash of the
    node (kill -9), not of the machine. Only for throw-away set-ups.
    """

    FSYNC = "fsync"
    NONE = "none"


class TlsSection(_Section):
    """DICOM over TLS on a port of its own (tls.py; PS3.15 B.12, BCP 195: TLS 1.2 or 1.3)."""

    port: int = Field(2762, ge=0, le=65535)  # 2762: the registered DICOM-TLS port; 0: any free one
    certificate: Path
    private_key: Path
    #: CA bundle that client certificates (and, outgoing, peers' server certificates) must chain to.
    ca_certificates: Path | None = None
    require_client_certificate: bool = True
    #: A connection that has not finished its handshake by then is dropped (and audited).
    handshake_timeout_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _ca_for_clients(self) -> TlsSection:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates (the CA the clients' certificates chain to)")
        return self


class NodeSection(_Section):
    ae_title: str = "AI_NODE"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)  # 0: any free port (tests)
    #: Reject calling AE titles (and, per peer, hosts) not listed in ``peers``.
    reject_unknown_callers: bool = True
    max_associations: int = Field(16, ge=1, le=1000)
    #: Seconds a silent association may stay open before it is aborted.
    network_timeout_seconds: float = Field(60.0, gt=0)
    #: Seconds a PDU may take from its first byte to its last: a peer trickling a byte at a time
    #: (each byte resetting the network timeout) is aborted.
    pdu_timeout_seconds: float = Field(60.0, gt=0)
    #: Seconds a new connection may take to send its whole A-ASSOCIATE-RQ; until it has, it holds
    #: no association slot (admission.py), and after this long it is closed.
    association_request_seconds: float = Field(10.0, gt=0)
    #: Connections one source address may have waiting for their A-ASSOCIATE-RQ (or their TLS
    #: handshake) at once; more are refused. 0: no cap.
    max_pending_per_address: int = Field(8, ge=0)
    #: Listener processes behind the port (the supervising process accepts and hands each
    #: connection to the least busy), so concurrent associations are not serialised by one
    #: interpreter's lock. 0: two per CPU core, at most 8.
    workers: int = Field(0, ge=0, le=64)
    #: The listener's replacements of pynetdicom internals (dicom_node/net/: event-driven waits,
    #: direct C-STORE and P-DATA handling). false: pynetdicom's own code paths (slower; for
    #: telling a fast-path defect from anything else). The bounded PDU reader and the exact
    #: send/reactor hand-over stay either way.
    fast_paths: bool = True
    #: The maximum PDU length this node advertises to callers (0: unlimited). Larger PDUs cost
    #: less per byte; a peer's PDU longer than this (plus 64 KiB) is refused unread.
    max_pdu_bytes: int = Field(1048576, ge=0, le=2**26)
    #: DICOM over TLS beside (or, with ``plain: false``, instead of) the plain port.
    tls: TlsSection | None = None
    #: Listen on the plain ``port``; false: TLS only.
    plain: bool = True

    def worker_count(self, cpus: int | None) -> int:
        """Listener processes to start: 4 concurrent associations on 2 cores ran at 302-431
        instances/s with 2 processes, 532-715 with 4, 482-566 with 8 (connections spread by
        the kernel's SO_REUSEPORT hash then; 674-777 with one process each)."""
        return self.workers or max(2, min(8, 2 * (cpus or 1)))

    #: Other called AE titles this port answers to (routing rules tell them apart with
    #: ``called_ae``: one port, several contexts, e.g. AI_CHEST and AI_NEURO).
    ae_titles: list[str] = []
    #: Refuse an association whose called AE title is neither ``ae_title`` nor one of
    #: ``ae_titles`` (A-ASSOCIATE-RJ, called AE title not recognised). Off: any called title is
    #: accepted and recorded as called.
    require_called_ae_title: bool = False

    @field_validator("ae_title")
    @classmethod
    def _check_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("ae_titles")
    @classmethod
    def _check_titles(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]


class StorageSection(_Section):
    path: Path = Path("./var/storage")
    durability: Durability = Durability.FSYNC
    #: New instances are refused with 0xA700 when free space drops below this.
    min_free_mb: int = Field(1024, ge=0)


def is_postgres_url(location: object) -> bool:
    """Whether an index location (index.url or index.path) names a PostgreSQL database."""
    return str(location).startswith(("postgresql://", "postgres://"))


def redacted(location: object) -> str:
    """An index location for messages: a URL's password replaced by ***."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", str(location))


class IndexSection(_Section):
    """Where the index lives: ``path`` (SQLite, the embedded default for one machine) or ``url``
    (``postgresql://user@host:port/database``: one index for listeners, workers and senders on
    several machines; index_postgres.py). With a url, ``path``'s folder still holds this
    machine's metrics files and nothing else."""

    path: Path = Path("./var/index.sqlite")
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value is not None and not is_postgres_url(value):
            raise ValueError("index.url: only postgresql://... URLs (leave it out for the SQLite file at index.path)")
        return value

    @property
    def location(self) -> Path | str:
        """What Index() opens: the PostgreSQL URL when set, else the SQLite file."""
        return self.url or self.path

    def describe(self) -> str:
        """The location for messages (a URL's password replaced)."""
        return redacted(self.url) if self.url else str(self.path)

    def exists(self) -> bool:
        """Whether there is an index to read (a PostgreSQL index is assumed to be there)."""
        return self.url is not None or self.path.exists()


class SyslogSection(_Section):
    """An ATNA audit repository: RFC 5424 syslog over TLS (RFC 5425, port 6514) or TCP."""

    host: str
    port: int = Field(6514, ge=1, le=65535)
    transport: Literal["tls", "tcp"] = "tls"
    #: The CA the repository's certificate chains to (default: the system's).
    ca_certificates: Path | None = None
    server_hostname: str | None = None


class AuditSection(_Section):
    #: JSON lines, hash-chained, one per association, refusal, delivery and removal (audit.py).
    path: Path = Path("./var/audit.jsonl")
    #: Also send the DICOM audit messages to an audit repository.
    syslog: SyslogSection | None = None
    #: The key that signs checkpoints and the anchor (audit.py); default ``<path>.key``, made
    #: owner-only with 32 random bytes at the first start. Keep a copy off the machine.
    key_file: Path | None = None
    #: A signed checkpoint after this many records or seconds, whichever comes first.
    checkpoint_records: int = Field(100, ge=1)
    checkpoint_seconds: float = Field(300.0, gt=0)


class Peer(_Section):
    """A remote AE the node knows. ``send``: may send (C-STORE) to us; ``receive``: may
    receive results from us. ``verify_host``: the caller must connect from ``host``."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    send: bool = True
    receive: bool = True
    verify_host: bool = False
    #: SEG encodings this peer should get, preferred first, each used only if the peer accepts
    #: it at association: binary-jpeg2000 (JPEG 2000 lossless), labelmap (Label Map SEG).
    #: Plain BINARY is always the last resort.
    seg_encodings: list[Literal["binary", "binary-jpeg2000", "labelmap"]] = []
    #: TLS both ways: this peer is accepted only on the TLS port with a client certificate that
    #: names it (``tls_identity``, else ``server_hostname``, else ``host``), and the node
    #: reaches it over TLS, checking its certificate against ``server_hostname`` (else ``host``).
    tls: bool = False
    server_hostname: str | None = None
    tls_identity: str | None = None

    def certificate_identity(self) -> str:
        """The name this peer's client certificate must carry."""
        return (self.tls_identity or self.server_hostname or self.host).lower()

    @field_validator("ae_title")
    @classmethod
    def _check_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a peer host must not be empty")
        return value.strip()

    def host_matches(self, address: str) -> bool:
        """Whether a connection from ``address`` may be this peer (names compare as given,
        addresses as IP addresses so ``::ffff:127.0.0.1`` equals ``127.0.0.1``)."""
        try:
            mine = ipaddress.ip_address(self.host)
            theirs = ipaddress.ip_address(address)
        except ValueError:
            return self.host == address
        if isinstance(theirs, ipaddress.IPv6Address) and theirs.ipv4_mapped is not None:
            theirs = theirs.ipv4_mapped
        return mine == theirs


class CompletionSection(_Section):
    series_stable_seconds: float = Field(10.0, gt=0)
    study_stable_seconds: float = Field(30.0, gt=0)
    #: How often the completion sweep looks at the index.
    sweep_interval_seconds: float = Field(1.0, gt=0)


class RouteMatch(_Section):
    """What a completed series must look like for a route to take it. Every key given must
    match; text keys compare case-insensitively, ``series_description`` is a regular expression
    searched in the description."""

    modality: list[str] = []
    body_part_examined: list[str] = []
    calling_ae: list[str] = []
    series_description: str | None = None
    min_instances: int = Field(1, ge=1)

    @field_validator("modality", "body_part_examined", "calling_ae", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("series_description")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class StudyTrigger(_Section):
    """When a ``trigger: study`` route acts on a study: once it has been quiet for
    ``quiet_seconds`` (default: completion.study_stable_seconds) with every series complete, or,
    with ``required_series`` (a condition each), as soon as each is met by a complete series of
    the study; ``max_wait_seconds`` after the study (version) began, ``on_timeout`` says what
    happens to a study still waiting: ``process`` what is there, or ``discard`` it (logged)."""

    quiet_seconds: float | None = Field(None, gt=0)
    required_series: list[Any] = []
    max_wait_seconds: float | None = Field(None, gt=0)
    on_timeout: Literal["process", "discard"] = "process"


class DeidentifiedTarget(_Section):
    """An item of a route's ``forward`` or ``destinations`` that gets its instances de-identified
    by the named profile (``deidentification.profiles``) on the way out: ``{peer: NAME,
    deidentify: PROFILE}``. Results such a peer sends back are mapped to the original patient
    and study and go to the route's plain destinations (privacy/reidentify.py)."""

    peer: str = Field(min_length=1)
    deidentify: str = Field(min_length=1)


class Route(_Section):
    """A routing rule. A completed series that matches goes to ``pipeline``, whose results go to
    ``destinations`` (peer names; ``sender`` means the peer that sent the series, when it may
    receive), and/or its instances are forwarded unchanged to the peers in ``forward``;
    ``discard: true`` takes it and does nothing more (logged).

    Rules are evaluated in the order written. ``on_match: continue`` (default) lets later rules
    act on the same series too; ``stop`` ends the evaluation there (so does ``discard``). A
    ``fallback: true`` rule acts only when no other rule of its trigger matched. The conditions
    are ``match:`` (the short form: modality, body part, calling AE, description, count) and
    ``when:`` (any attribute, the association, counts; all/any/not: rules.py), both must hold.
    ``trigger: series`` acts per completed series; ``trigger: study`` waits for the study
    (``study:``, StudyTrigger) and then acts on each of its complete series that match.

    ``pipeline`` may be a list: the first whose domain the series is in runs (the gate, ai/trust);
    when none is, the job ends ``not applicable`` and, with ``on_not_applicable: report``, the
    destinations are told why."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    match: RouteMatch = RouteMatch()
    when: Any = None
    trigger: Literal["series", "study"] = "series"
    study: StudyTrigger = StudyTrigger()
    on_match: Literal["continue", "stop"] = "continue"
    fallback: bool = False
    discard: bool = False
    pipeline: str | list[str] | None = None
    on_not_applicable: Literal["report", "silent"] = "report"
    destinations: list[str | DeidentifiedTarget] = ["sender"]
    forward: list[str | DeidentifiedTarget] = []
    priority: Literal["urgent", "routine"] = "routine"
    _condition: Condition = PrivateAttr()
    _required: tuple[Condition, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _parse_conditions(self) -> Route:
        try:
            parts: list[Condition] = list(match_conditions(self.match))
            if self.when is not None:
                when = parse_condition(self.when, "when")
                parts.extend(when.parts if isinstance(when, AllOf) else [when])
            self._condition = AllOf(tuple(parts))
            self._required = tuple(parse_condition(c, f"study.required_series[{n}]")
                                   for n, c in enumerate(self.study.required_series))
        except RuleError as exc:
            raise ValueError(f"route {self.name}: {exc}") from None
        if self._required and self.study.max_wait_seconds is None:
            raise ValueError(f"route {self.name}: study.required_series needs study.max_wait_seconds (how long to wait "
                             "for them)")
        if self.trigger == "series" and self.study != StudyTrigger():
            raise ValueError(f"route {self.name}: study: applies to trigger: study only")
        names = self.forward_peers
        if len(set(names)) < len(names) or len(set(self.destination_peers)) < len(self.destination_peers):
            raise ValueError(f"route {self.name}: a peer is named twice in forward or destinations")
        if self.discard and (self.pipeline is not None or self.forward):
            raise ValueError(f"route {self.name}: discard takes the series and does nothing with it; no pipeline or "
                             "forward beside it")
        return self

    @property
    def condition(self) -> Condition:
        """Everything the series must satisfy: ``match:`` and ``when:`` together."""
        return self._condition

    @property
    def required_series(self) -> tuple[Condition, ...]:
        return self._required

    @property
    def stops(self) -> bool:
        """Whether a match ends the evaluation of later rules."""
        return self.on_match == "stop" or self.discard

    @property
    def pipeline_names(self) -> list[str]:
        """The route's pipelines in the order they are tried (empty: forward only)."""
        if self.pipeline is None:
            return []
        return [self.pipeline] if isinstance(self.pipeline, str) else list(self.pipeline)

    @property
    def forward_peers(self) -> list[str]:
        """The peer names of ``forward``, de-identified or not."""
        return [t if isinstance(t, str) else t.peer for t in self.forward]

    @property
    def destination_peers(self) -> list[str]:
        return [t if isinstance(t, str) else t.peer for t in self.destinations]

    def profile_for(self, peer: str, kind: Literal["forward", "destination"]) -> str | None:
        """The de-identification profile ``peer`` gets as a forward peer or a destination (None: plain)."""
        for target in self.forward if kind == "forward" else self.destinations:
            if isinstance(target, DeidentifiedTarget) and target.peer == peer:
                return target.deidentify
        return None

    @property
    def deidentifies(self) -> bool:
        """Whether anything leaves this route de-identified."""
        return any(isinstance(t, DeidentifiedTarget) for t in [*self.forward, *self.destinations])

    @property
    def plain_destinations(self) -> list[str]:
        """The destinations that get identified data: where results returning from a
        de-identified forward go."""
        return [t for t in self.destinations if isinstance(t, str)]


def match_conditions(match: RouteMatch) -> list[Condition]:
    """The short ``match:`` form as conditions (text compared in any case, as it always was)."""
    from pydicom.tag import Tag

    parts: list[Condition] = []
    for key, keyword, tag in (("modality", "Modality", 0x00080060), ("body_part_examined", "BodyPartExamined", 0x00180015)):
        values = getattr(match, key)
        if values:
            parts.append(AttributeCondition(Tag(tag), keyword, TextTest("one_of", list(values), ignore_case=True)))
    if match.calling_ae:
        parts.append(ContextCondition("calling_ae", TextTest("one_of", list(match.calling_ae), ignore_case=True)))
    if match.series_description is not None:
        parts.append(AttributeCondition(Tag(0x0008103E), "SeriesDescription",
                                        TextTest("regex", match.series_description, ignore_case=True)))
    if match.min_instances > 1:
        parts.append(CountCondition("instances", match.min_instances, None))
    return parts


class LabelCodes(_Section):
    """SNOMED CT (or other) codes of a label, as (code value, scheme, meaning)."""

    category: tuple[str, str, str]
    type: tuple[str, str, str]


class PipelineSpec(_Section):
    """``model``: a model card, by name from the registry (``model: ct-organs``, ai/models) or
    as a folder anywhere (``path: DIR`` holding card.yaml and the weights; the card's ``format``
    says torchscript or onnx); ``monai-bundle``: a MONAI bundle folder (``path:``) run by its
    own configuration; ``nnunet``: a trained nnU-Net v2 model folder (``path:``); ``classical``: the non-learned CT baseline; ``command``: an external
    program or container under mercure's module contract. ``device``: auto (CUDA when
    present), cpu or cuda[:N]."""

    kind: Literal["model", "classical", "command", "monai-bundle", "nnunet"] = "model"
    model: str | None = None
    path: Path | None = None
    device: str = "auto"
    #: The job queue its series go to (job_engine.queue_for): by default ``gpu`` for device
    #: cuda[:N], else ``default``; a site may name its own (a big-memory host, say).
    queue: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    # kind command (dicom_node/command_pipeline.py): the program and its arguments ({in} and
    # {out} become the work folders), how long it may run, what it is called in the results,
    # its domain (dicom_node's gate holds every series against it: at least the modality),
    # SNOMED codes for its label names, and settings handed over in task.json.
    command: list[str] = []
    timeout_seconds: float = Field(600.0, gt=0)
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = "unknown"
    domain: dict[str, Any] | None = None
    codes: dict[str, LabelCodes] = {}
    settings: dict[str, Any] = {}
    # kind nnunet (ai/nnunet_model.py): which folds and checkpoint of the model folder, test-time
    # mirroring (nnU-Net's default), and whether the series goes in as it is or as RAS+.
    folds: list[int | str] = [0]
    checkpoint: str = "checkpoint_final.pth"
    mirroring: bool = True
    orientation: Literal["as-is", "ras"] = "as-is"

    def label_codes(self) -> dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]]:
        """``codes:`` as label name -> (category, type)."""
        return {label: (tuple(c.category), tuple(c.type)) for label, c in self.codes.items()}  # type: ignore[misc]


class ResultsSection(_Section):
    #: Result objects waiting for delivery (and kept after it, for audit and re-sends).
    path: Path = Path("./var/results")
    seg_series_number: int = Field(9001, ge=1)
    sr_series_number: int = Field(9002, ge=1)
    #: keep: one SEG frame per source frame and segment; omit: drop frames with no voxel.
    empty_frames: Literal["keep", "omit"] = "keep"
    #: Also send the model's per-voxel uncertainty as a Parametric Map (dicom_node/uncertainty_map.py):
    #: 4 bytes per source voxel (315 MB for 512 x 512 x 300), so off unless a site wants it.
    uncertainty_map: bool = False
    map_series_number: int = Field(9003, ge=1)


class JobsSection(_Section):
    #: Analysis worker processes that ``serve`` starts (0: none; run ``dicom-node worker``).
    workers: int = Field(1, ge=0, le=64)
    #: A running job's lease; a worker renews it every third of it while it works.
    lease_seconds: float = Field(120.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_base_seconds: float = Field(30.0, ge=0)
    poll_seconds: float = Field(1.0, gt=0)
    #: Who hands jobs to workers (job_engine.py): ``lease``, the node's own lease loop on the
    #: index (the embedded default for one machine); ``procrastinate``, the procrastinate job
    #: engine in the PostgreSQL index (several hosts; jobs deferred in the transaction that
    #: routes the series); ``auto``: procrastinate when index.url is set, else lease.
    engine: Literal["auto", "lease", "procrastinate"] = "auto"
    #: The queues this machine's workers take (``serve --queues`` overrides): a job goes to its
    #: pipelines' queue (``gpu`` when one wants cuda, else ``default``, or a pipeline's own
    #: ``queue:``). Unset: ``gpu`` and ``default`` where torch sees a GPU, else ``default``.
    queues: list[str] | None = None
    #: procrastinate: a worker that has not renewed its heartbeat for this long is taken as dead
    #: and its job runs again elsewhere (heartbeats every third of it).
    stalled_seconds: float = Field(30.0, gt=0)


class DeliverySection(_Section):
    #: First retry after this long, doubling each time up to retry_max_seconds.
    retry_base_seconds: float = Field(5.0, gt=0)
    retry_max_seconds: float = Field(600.0, gt=0)
    #: A delivery still failing this long after it was queued is dead-lettered.
    give_up_after_seconds: float = Field(86400.0, gt=0)
    interval_seconds: float = Field(1.0, gt=0)
    timeout_seconds: float = Field(60.0, gt=0)


class LogsSection(_Section):
    #: ``text``: one readable line per event; ``json``: one JSON object per line, with the
    #: association, study, series, job and peer it is about (logs.py).
    format: Literal["text", "json"] = "text"


class RetentionSection(_Section):
    """What the node keeps (retention.py). Off by default: a node that deletes studies is a
    decision for the site. A study goes only when nothing about it is unfinished."""

    enabled: bool = False
    #: Studies whose last instance arrived longer ago than this are removed (None: no age limit).
    max_age_days: float | None = Field(None, gt=0)
    #: Result folders of jobs finished longer ago than this, with no delivery pending.
    results_max_age_days: float | None = Field(None, gt=0)
    #: While free space is under this, the oldest studies are removed first.
    disk_free_watermark_mb: int | None = Field(None, gt=0)
    interval_seconds: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _something_to_do(self) -> RetentionSection:
        if self.enabled and self.max_age_days is None and self.results_max_age_days is None \
                and self.disk_free_watermark_mb is None:
            raise ValueError("retention is enabled but sets no limit: give max_age_days, results_max_age_days or "
                             "disk_free_watermark_mb")
        return self


class WebTlsSection(_Section):
    certificate: Path
    private_key: Path


class WebSection(_Section):
    """The web service ``serve`` starts beside the listener: /health, /ready, /metrics, the JSON
    API and the dashboard. On loopback by default; bound anywhere else it needs a bearer token
    (read from ``token_file``, never written in this file)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)  # 0: any free port (tests)
    token_file: Path | None = None
    #: Host names (Host header) the service answers besides loopback and web.host (web_guard.py).
    allowed_hosts: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(65536, ge=1024)
    max_header_bytes: int = Field(16384, ge=4096)
    #: A request must arrive whole within this long (slow and silent connections are closed).
    request_timeout_seconds: float = Field(10.0, gt=0)
    max_concurrency: int = Field(32, ge=1)
    #: How long a browser's sign-in lasts.
    session_hours: float = Field(12.0, gt=0)
    #: Failed sign-ins allowed per client address within 5 minutes before it must wait.
    login_attempts: int = Field(5, ge=1)
    #: HTTPS for the dashboard and API: {certificate, private_key} (PEM files).
    tls: WebTlsSection | None = None

    @model_validator(mode="after")
    def _token_off_loopback(self) -> WebSection:
        if self.enabled and self.token_file is None and not _is_loopback(self.host):
            raise ValueError(f"web.host {self.host} is reachable from other machines: set web.token_file (a file "
                             "holding the bearer token callers must send), or bind 127.0.0.1")
        return self

    def token(self) -> str | None:
        """The bearer token, read from token_file (None: no token needed, loopback only)."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"web.token_file {self.token_file}: {exc}") from None
        if token_bits(token) < 128:
            raise ConfigError(f"web.token_file {self.token_file}: the token has under 128 bits of randomness (make one "
                              "with: openssl rand -hex 32)")
        return token


def token_bits(token: str) -> float:
    """A generous estimate of a token's strength: its length times the bits per character of the
    alphabet it draws from (hex, or the character classes it uses); a token of fewer than 8
    distinct characters is no secret at all (0)."""
    if len(set(token)) < 8:
        return 0.0
    if all(c in string.hexdigits for c in token) and (token.islower() or token.isupper() or token.isdigit()):
        alphabet = 16
    else:
        classes = [(str.isdigit, 10), (str.islower, 26), (str.isupper, 26)]
        alphabet = sum(size for test, size in classes if any(test(c) for c in token))
        alphabet += 32 if any(not c.isalnum() for c in token) else 0
    return len(token) * math.log2(alphabet)


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SafePrivateSection(_Section):
    """A private element a profile keeps under retain_safe_private: group (odd, hex), private
    creator, element offset in the creator's block (hex 00-FF)."""

    group: str = Field(pattern=r"^[0-9A-Fa-f]{4}$")
    creator: str = Field(min_length=1, max_length=64)
    element: str = Field(pattern=r"^[0-9A-Fa-f]{2}$")

    @field_validator("group")
    @classmethod
    def _odd(cls, value: str) -> str:
        if int(value, 16) % 2 == 0:
            raise ValueError(f"group {value} is even: private groups are odd")
        return value


class DeidentificationProfileSection(_Section):
    """A named de-identification profile: PS3.15 E.3 options in snake_case (privacy/table.py
    lists them), what happens to instances that may carry identity burned into their pixels
    (``hold``: held back, logged; ``send``: the site vouches that its modalities burn in
    nothing), and the private elements retain_safe_private keeps."""

    options: list[str] = []
    burned_in: Literal["hold", "send"] = "hold"
    safe_private: list[SafePrivateSection] = []

    @field_validator("options")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from .privacy.table import OPTIONS

        unknown = [o for o in value if o not in OPTIONS]
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}. The node does not "
                             "alter pixel data: clean_pixel_data and clean_recognizable_visual_features are not offered, "
                             "and instances that may carry burned-in identity are held back (burned_in: hold)")
        if {"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"} <= set(value):
            raise ValueError("retain_longitudinal_full_dates and retain_longitudinal_modified_dates exclude each other")
        return value


class DeidentificationSection(_Section):
    """De-identified forwarding and export (privacy/). ``key_file``: the site secret the
    pseudonyms are made from (at least 32 bytes; never in this file)."""

    key_file: Path | None = None
    profiles: dict[str, DeidentificationProfileSection] = {}

    def deidentifier(self, name: str) -> Any:
        """The engine for profile ``name`` with the site key (ConfigError when either is missing)."""
        from .privacy.deidentify import Deidentifier, Profile, SafePrivate
        from .privacy.pseudonyms import PseudonymKey

        spec = self.profiles.get(name)
        if spec is None:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ConfigError(f"deidentification.profiles: no profile named {name!r} (known: {known})")
        if self.key_file is None:
            raise ConfigError("deidentification.key_file is not set: pseudonyms need the site secret")
        profile = Profile(name, frozenset(spec.options), spec.burned_in,
                          tuple(SafePrivate(int(s.group, 16), s.creator, int(s.element, 16)) for s in spec.safe_private))
        return Deidentifier(profile, PseudonymKey.from_file(self.key_file))


class NodeConfig(_Section):
    """The whole configuration file."""

    node: NodeSection = NodeSection()
    storage: StorageSection = StorageSection()
    index: IndexSection = IndexSection()
    audit: AuditSection = AuditSection()
    peers: list[Peer] = []
    completion: CompletionSection = CompletionSection()
    routes: list[Route] = []
    pipelines: dict[str, PipelineSpec] = {}
    results: ResultsSection = ResultsSection()
    web: WebSection = WebSection()
    retention: RetentionSection = RetentionSection()
    logs: LogsSection = LogsSection()
    jobs: JobsSection = JobsSection()
    delivery: DeliverySection = DeliverySection()
    deidentification: DeidentificationSection = DeidentificationSection()

    @field_validator("peers")
    @classmethod
    def _unique_peers(cls, peers: list[Peer]) -> list[Peer]:
        names = [p.name for p in peers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"peer names must be unique, repeated: {', '.join(dupes)}")
        return peers

    @model_validator(mode="after")
    def _check_tls(self) -> NodeConfig:
        if not self.node.plain and self.node.tls is None:
            raise ValueError("node.plain: false turns the plain port off, so node.tls must be set")
        needing = [p.name for p in self.peers if p.tls]
        if needing and self.node.tls is None:
            raise ValueError(f"peers {', '.join(needing)} use tls: node.tls (certificate, private_key, "
                             "ca_certificates) must be set")
        return self

    @model_validator(mode="after")
    def _check_job_engine(self) -> NodeConfig:
        if self.jobs.engine == "procrastinate" and self.index.url is None:
            raise ValueError("jobs.engine: procrastinate keeps its jobs in PostgreSQL: set index.url (or use lease)")
        return self

    @property
    def job_engine(self) -> Literal["lease", "procrastinate"]:
        """The engine jobs run on (``jobs.engine``, ``auto`` resolved by the index backend)."""
        if self.jobs.engine == "auto":
            return "procrastinate" if self.index.url is not None else "lease"
        return self.jobs.engine

    @model_validator(mode="after")
    def _check_routes(self) -> NodeConfig:
        peers = {p.name: p for p in self.peers}
        if any(r.deidentifies for r in self.routes) and self.deidentification.key_file is None:
            raise ValueError("routes de-identify but deidentification.key_file is not set (the site secret pseudonyms "
                             "are made from)")
        for number, route in enumerate(self.routes):
            where = f"routes[{number}] ({route.name})"
            if route.pipeline is None and not route.forward and not route.discard:
                raise ValueError(f"{where}: needs a pipeline, peers to forward to, both, or discard: true")
            if isinstance(route.pipeline, list) and not route.pipeline:
                raise ValueError(f"{where}: pipeline: an empty list (give one pipeline, a list, or none)")
            for name in route.pipeline_names:
                if name not in self.pipelines:
                    known = ", ".join(sorted(self.pipelines)) or "none"
                    raise ValueError(f"{where}: no pipeline named {name!r} (known: {known})")
            targets = [("destination", n) for n in route.destination_peers if n != "sender"] \
                if route.pipeline or route.deidentifies else []
            for target in [*route.forward, *route.destinations]:
                if isinstance(target, DeidentifiedTarget):
                    if target.deidentify not in self.deidentification.profiles:
                        known = ", ".join(sorted(self.deidentification.profiles)) or "none"
                        raise ValueError(f"{where}: peer {target.peer!r}: no de-identification profile named "
                                         f"{target.deidentify!r} (deidentification.profiles: {known})")
                    if target.peer == "sender":
                        raise ValueError(f"{where}: de-identified data goes to a named peer, not back to the sender")
            for kind, name in targets + [("forward peer", n) for n in route.forward_peers if n != "sender"]:
                if name not in peers:
                    raise ValueError(f"{where}: {kind} {name!r} is not a peer")
                if not peers[name].receive:
                    raise ValueError(f"{where}: peer {name!r} has receive: false")
        for name, spec in self.pipelines.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"pipelines.{name}: a pipeline name uses letters, digits, '_', '.' and '-'")
            if spec.kind in ("monai-bundle", "nnunet") and (spec.path is None or spec.domain is None):
                raise ValueError(f"pipelines.{name}: kind {spec.kind} needs the model folder (path:) and a domain "
                                 "(at least its modality)")
            if spec.kind == "command" and (not spec.command or spec.domain is None):
                raise ValueError(f"pipelines.{name}: kind command needs a command and a domain (at least its modality)")
            if spec.kind == "model" and (spec.model is None) == (spec.path is None):
                raise ValueError(f"pipelines.{name}: kind model needs a model name (model:) or a card folder (path:), "
                                 "one of the two")
        return self

    def peer(self, name: str) -> Peer:
        """The peer called ``name``; ConfigError names the known ones otherwise."""
        for peer in self.peers:
            if peer.name == name:
                return peer
        known = ", ".join(p.name for p in self.peers) or "none"
        raise ConfigError(f"peers: no peer named {name!r} (known: {known})")

    def callers(self) -> list[Peer]:
        """Peers allowed to send to us."""
        return [p for p in self.peers if p.send]


def resolve_config_path(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """``--config`` wins, then ``$DICOM_NODE_CONFIG``, then config/node.yaml."""
    if path:
        return Path(path)
    if environ.get(CONFIG_ENV_VAR):
        return Path(environ[CONFIG_ENV_VAR])
    return DEFAULT_CONFIG_PATH


def _format_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]).lstrip(".") or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against README.md)"
        got = item.get("input")
        shown = "" if item["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {key}: {message}{shown}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>", environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Validate already-loaded YAML data, applying environment overrides first."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of sections, got {type(data).__name__}")
    data = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    for var, (section, key) in ENV_OVERRIDES.items():
        if environ and var in environ:
            target = data.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{source}: {section}: expected a mapping, got {type(target).__name__}")
            target[key] = environ[var]
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None,
                missing_hint: str | None = None) -> NodeConfig:
    """Read and validate the configuration file; ConfigError says what to fix (``missing_hint``:
    what to tell a user who has no file yet)."""
    env = os.environ if environ is None else environ
    config_path = resolve_config_path(path, env)
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = missing_hint or f"use --config PATH or ${CONFIG_ENV_VAR}"
        raise ConfigError(f"{config_path}: configuration file not found ({hint})") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read configuration file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{config_path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(config_path), env)
