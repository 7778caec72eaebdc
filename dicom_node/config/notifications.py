"""The ``notifications`` section: who hears of what the node does (dicom_node/notify/).

``targets`` name where notifications go (a webhook, a mailbox, the RIS over HL7 v2 MLLP);
``subscriptions`` say which events go to which targets, optionally only when a condition of the
routing rules' language holds for the event's series. Secrets come from files only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from .base import _Section
from .rules import Condition, RuleError, parse_condition

#: The node's event types (storage/events.py records them; README "Notifications" has their payloads).
EVENT_TYPES = ("study.complete", "job.done", "job.not_applicable", "job.failed", "job.dead", "delivery.dead",
               "results.returned", "process.died", "security.alert", "disk.low", "model.drift", "correction.recorded")
#: What an HL7 target reports: a finished analysis, the node's own or an external AI's.
ORU_EVENTS = ("job.done", "results.returned")


class WebhookTarget(_Section):
    """An HTTP(S) POST of JSON per event, signed: ``X-Dicom-Node-Signature: sha256=<hex>``, the
    HMAC-SHA256 of the body under the key in ``secret_file``. ``template``: a Jinja2 template
    (sandboxed) of the body instead of the documented default."""

    kind: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    secret_file: Path | None = None
    template: str | None = None
    content_type: str = "application/json"
    timeout_seconds: float = Field(10.0, gt=0)
    ca_certificates: Path | None = None


class EmailTarget(_Section):
    """E-mail over SMTP, STARTTLS unless ``starttls: false`` (then only to loopback), signed in
    as ``user`` with the password in ``password_file`` when given."""

    kind: Literal["email"]
    host: str
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    user: str | None = None
    password_file: Path | None = None
    sender: str
    recipients: list[str] = Field(min_length=1)
    subject: str = "[{{ node }}] {{ event.type }}{% if study.accession_number %} {{ study.accession_number }}{% endif %}"
    body: str | None = None
    timeout_seconds: float = Field(20.0, gt=0)
    ca_certificates: Path | None = None


class Hl7Target(_Section):
    """The RIS: HL7 v2.5 ORU^R01 over MLLP (TLS with ``tls: true``), one per finished analysis,
    the ACK awaited: AA delivered, AE/AR dead with the reason, none retried."""

    kind: Literal["hl7"]
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    ca_certificates: Path | None = None
    server_hostname: str | None = None
    sending_application: str = "DICOM_NODE"
    sending_facility: str = ""
    receiving_application: str = "RIS"
    receiving_facility: str = ""
    timeout_seconds: float = Field(30.0, gt=0)


class Subscription(_Section):
    """``on`` these event types, ``when`` (optional) this condition holds for the event's series,
    notify ``to`` these targets. ``include_patient_name``: e-mails and webhooks carry the
    patient's name only when this says so (HL7 always identifies the patient: it is for the RIS)."""

    on: list[str] = Field(min_length=1)
    when: Any = None
    to: list[str] = Field(min_length=1)
    include_patient_name: bool = False
    _condition: Condition | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        """YAML 1.1 (PyYAML) reads an unquoted ``on:`` key as the boolean true: take it as ``on``."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @model_validator(mode="after")
    def _check(self) -> Subscription:
        unknown = [t for t in self.on if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s) {', '.join(unknown)} (known: {', '.join(EVENT_TYPES)})")
        if self.when is not None:
            try:
                self._condition = parse_condition(self.when, "when")
            except RuleError as exc:
                raise ValueError(str(exc)) from None
        return self

    @property
    def condition(self) -> Condition | None:
        return self._condition


class NotificationsSection(_Section):
    targets: dict[str, WebhookTarget | EmailTarget | Hl7Target] = {}
    subscriptions: list[Subscription] = []
    #: A failed notification is tried again after 5 s, 10 s, ... capped at retry_max_seconds, and
    #: dead after give_up_after_seconds.
    retry_base_seconds: float = Field(5.0, gt=0)
    retry_max_seconds: float = Field(300.0, gt=0)
    give_up_after_seconds: float = Field(86400.0, gt=0)
    interval_seconds: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _check_targets(self) -> NotificationsSection:
        for number, subscription in enumerate(self.subscriptions):
            missing = [t for t in subscription.to if t not in self.targets]
            if missing:
                raise ValueError(f"subscriptions[{number}]: no target named {', '.join(missing)} "
                                 f"(known: {', '.join(sorted(self.targets)) or 'none'})")
            ris = [t for t in subscription.to if isinstance(self.targets[t], Hl7Target)]
            if ris and not set(subscription.on) <= set(ORU_EVENTS):
                raise ValueError(f"subscriptions[{number}]: {', '.join(ris)} is an HL7 target: it reports finished "
                                 f"analyses, so on: {', '.join(ORU_EVENTS)} only")
        return self
