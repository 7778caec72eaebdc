"""The node's configuration: one YAML file, validated into typed models, one module per section
(node, storage, peers, routes and the rule language they use, analysis, web, privacy), the whole
file (model.py) and how it is read (loading.py).

Operators script against these key names, so they are stable and documented in README.md.
A bad file raises :class:`ConfigError` whose message names the key and what is wrong, so the
node refuses to start instead of running half-configured.

Relative paths in the file are resolved against the current working directory, as the
README's commands run the node from the repository root.
"""

from __future__ import annotations

from .analysis import DeliverySection, JobsSection, LabelCodes, PipelineSpec, ResultsSection
from .base import is_postgres_url, redacted
from .dicomweb import AUTH_KINDS, DicomwebAuth, DicomwebSection
from .loading import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH, ENV_OVERRIDES, load_config, parse_config, resolve_config_path
from .model import NodeConfig
from .monitoring import MonitoringSection
from .node import Durability, NodeSection, TlsSection
from .notifications import EmailTarget, Hl7Target, NotificationsSection, Subscription, WebhookTarget
from .peers import Peer
from .privacy import DEIDENTIFICATION_OPTIONS, DeidentificationProfileSection, DeidentificationSection, SafePrivateSection
from .routes import CompletionSection, DeidentifiedTarget, PriorsSpec, Route, RouteMatch, StudyTrigger, match_conditions
from .sources import PollSource
from .storage import AuditSection, IndexSection, LogsSection, RetentionSection, StorageSection, SyslogSection
from .web import WebSection, WebTlsSection, token_bits

__all__ = [
    "EmailTarget",
    "Hl7Target",
    "MonitoringSection",
    "NotificationsSection",
    "Subscription",
    "WebhookTarget",
    "AUTH_KINDS",
    "DicomwebAuth",
    "DicomwebSection",
    "AuditSection",
    "CONFIG_ENV_VAR",
    "CompletionSection",
    "DEFAULT_CONFIG_PATH",
    "DEIDENTIFICATION_OPTIONS",
    "DeidentificationProfileSection",
    "DeidentificationSection",
    "DeidentifiedTarget",
    "DeliverySection",
    "Durability",
    "ENV_OVERRIDES",
    "IndexSection",
    "JobsSection",
    "LabelCodes",
    "LogsSection",
    "NodeConfig",
    "NodeSection",
    "Peer",
    "PollSource",
    "PipelineSpec",
    "ResultsSection",
    "RetentionSection",
    "PriorsSpec",
    "Route",
    "RouteMatch",
    "SafePrivateSection",
    "StorageSection",
    "StudyTrigger",
    "SyslogSection",
    "TlsSection",
    "WebSection",
    "WebTlsSection",
    "is_postgres_url",
    "load_config",
    "match_conditions",
    "parse_config",
    "redacted",
    "resolve_config_path",
    "token_bits",
]
