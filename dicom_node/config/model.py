"""The whole configuration file as one model, with the checks that span sections (routes name
known peers and pipelines, TLS where a peer needs it, the job engine the index allows)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator, model_validator

from ..errors import ConfigError
from .analysis import DeliverySection, JobsSection, PipelineSpec, ResultsSection
from .base import _Section
from .monitoring import MonitoringSection
from .node import NodeSection
from .notifications import NotificationsSection
from .peers import Peer
from .privacy import DeidentificationSection
from .routes import CompletionSection, DeidentifiedTarget, Route
from .sources import PollSource
from .storage import AuditSection, IndexSection, LogsSection, RetentionSection, StorageSection
from .web import WebSection


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
    sources: list[PollSource] = []
    notifications: NotificationsSection = NotificationsSection()
    monitoring: MonitoringSection = MonitoringSection()

    @field_validator("peers")
    @classmethod
    def _unique_peers(cls, peers: list[Peer]) -> list[Peer]:
        names = [p.name for p in peers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"peer names must be unique, repeated: {', '.join(dupes)}")
        for client in (p for p in peers if p.stow):
            # What a STOW-RS client sends is recorded under its AE title: no other peer may share it.
            twins = [p.name for p in peers if p is not client and p.ae_title == client.ae_title]
            if twins:
                raise ValueError(f"peer {client.name} (stow: true) has AE title {client.ae_title!r}, as {', '.join(twins)} "
                                 "has: give it an ae_title of its own")
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
        kept = self.monitoring.cases_deidentify
        if kept is not None and kept not in self.deidentification.profiles:
            known = ", ".join(sorted(self.deidentification.profiles)) or "none"
            raise ValueError(f"monitoring.cases_deidentify: no de-identification profile named {kept!r} "
                             f"(deidentification.profiles: {known})")
        if kept is not None and self.deidentification.key_file is None:
            raise ValueError("monitoring.cases_deidentify is set but deidentification.key_file is not (the site secret "
                             "pseudonyms are made from)")
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
                if not peers[name].has_dimse and peers[name].dicomweb is None:
                    raise ValueError(f"{where}: peer {name!r} has neither a DIMSE address nor a dicomweb: service to "
                                     "send to")
        for route in self.routes:
            if route.priors is None:
                continue
            if route.priors.source is not None and (route.priors.source not in peers or not peers[route.priors.source].query):
                raise ValueError(f"route {route.name}: priors.source {route.priors.source!r} is not a peer with query: true")
            others = [n for n in route.pipeline_names if n in self.pipelines and self.pipelines[n].kind != "command"]
            if not route.pipeline_names or others:
                raise ValueError(f"route {route.name}: priors are handed to command pipelines only"
                                 + (f" ({', '.join(others)} is not one)" if others else ""))
        for number, source in enumerate(self.sources):
            if source.peer not in peers or not peers[source.peer].query:
                raise ValueError(f"sources[{number}]: peer {source.peer!r} is not a peer with query: true")
            if source.route is not None and source.route not in {r.name for r in self.routes}:
                raise ValueError(f"sources[{number}]: no route named {source.route!r}")
        for name, spec in self.pipelines.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"pipelines.{name}: a pipeline name uses letters, digits, '_', '.' and '-'")
            if spec.kind == "nnunet" and (spec.path is None or spec.domain is None):
                raise ValueError(f"pipelines.{name}: kind nnunet needs the model folder (path:) and a domain "
                                 "(at least its modality)")
            if spec.kind == "monai-bundle" and spec.path is None:
                raise ValueError(f"pipelines.{name}: kind monai-bundle needs the bundle folder (path:); its domain's "
                                 "modality defaults to what the bundle's metadata names")
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
        """Peers allowed to send to us by DIMSE (C-STORE)."""
        return [p for p in self.peers if p.send and p.has_dimse]

    def stow_clients(self) -> list[Peer]:
        """Peers allowed to push to the node's STOW-RS endpoint."""
        return [p for p in self.peers if p.stow]
