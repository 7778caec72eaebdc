"""The webhook target: the event as JSON (context.default_body, or the target's sandboxed Jinja2
template), POSTed with ``X-Dicom-Node-Signature: sha256=<hex HMAC-SHA256 of the body>`` under the
key in ``secret_file``, and ``X-Dicom-Node-Event`` / ``X-Dicom-Node-Delivery`` naming the event
and the notification (a receiver recognises a resend). 2xx delivered; 408, 429 and 5xx and
network errors retried; any other answer dead with the status and the start of the body."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import requests
from jinja2.sandbox import SandboxedEnvironment

from ..config import WebhookTarget
from ..errors import NotificationError
from .context import default_body

_TEMPLATES = SandboxedEnvironment(autoescape=False)
_TEMPLATES.filters["tojson"] = lambda value: json.dumps(value, default=str)
RETRIABLE = frozenset({408, 429, 500, 502, 503, 504})


def webhook_body(target: WebhookTarget, context: dict[str, Any]) -> bytes:
    if target.template is None:
        return json.dumps(default_body(context), default=str, sort_keys=True).encode()
    return _TEMPLATES.from_string(target.template).render(**context).encode()


def signature(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def send_webhook(target: WebhookTarget, context: dict[str, Any], notification_id: int) -> None:
    body = webhook_body(target, context)
    headers = {"Content-Type": target.content_type, "X-Dicom-Node-Event": context["event"]["type"],
               "X-Dicom-Node-Delivery": str(notification_id), "User-Agent": "dicom-node"}
    if target.secret_file is not None:
        try:
            key = target.secret_file.read_bytes().strip()
        except OSError as exc:
            raise NotificationError(f"cannot read the webhook secret {target.secret_file}: {exc.strerror}") from None
        headers["X-Dicom-Node-Signature"] = signature(key, body)
    verify: str | bool = str(target.ca_certificates) if target.ca_certificates is not None else True
    try:
        response = requests.post(target.url, data=body, headers=headers, timeout=target.timeout_seconds, verify=verify)
    except requests.RequestException as exc:
        raise NotificationError(f"webhook {target.url} unreachable: {exc}") from None
    if 200 <= response.status_code < 300:
        return
    raise NotificationError(f"webhook {target.url} answered HTTP {response.status_code} {response.text[:200]}".strip(),
                            permanent=response.status_code not in RETRIABLE)
