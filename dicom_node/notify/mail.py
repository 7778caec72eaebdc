"""The e-mail target: SMTP (smtplib), STARTTLS before anything is said unless the target says
``starttls: false`` (then to a loopback relay only), signed in with the password from its file,
a subject and plain-text body from sandboxed Jinja2 templates. A refused recipient or sign-in is
dead; a server that is down or answers 4xx is retried."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

from jinja2.sandbox import SandboxedEnvironment

from ..config import EmailTarget
from ..errors import NotificationError

_TEMPLATES = SandboxedEnvironment(autoescape=False)

DEFAULT_BODY = """{{ event.type }} on {{ node }}
{% if study.study_uid %}
Study: {{ study.study_description or "" }} {{ study.study_date or "" }}
  Patient ID: {{ study.patient_id or "" }}{% if study.patient_name %}, name: {{ study.patient_name }}{% endif %}
  Accession: {{ study.accession_number or "" }}
  Study Instance UID: {{ study.study_uid }}
{% endif %}{% if series.series_uid %}Series: {{ series.modality or "" }} {{ series.series_description or "" }} ({{ series.series_uid }})
{% endif %}
{% for key, value in payload.items() %}{{ key }}: {{ value }}
{% endfor %}"""


def send_email(target: EmailTarget, context: dict[str, Any]) -> None:
    message = EmailMessage()
    message["From"] = target.sender
    message["To"] = ", ".join(target.recipients)
    message["Subject"] = _TEMPLATES.from_string(target.subject).render(**context).strip()[:250]
    message["X-Dicom-Node-Event"] = f"{context['event']['type']} {context['event']['id']}"
    message.set_content(_TEMPLATES.from_string(target.body or DEFAULT_BODY).render(**context))
    try:
        with smtplib.SMTP(target.host, target.port, timeout=target.timeout_seconds) as smtp:
            if target.starttls:
                tls = ssl.create_default_context(cafile=str(target.ca_certificates) if target.ca_certificates else None)
                smtp.starttls(context=tls)
            if target.user is not None and target.password_file is not None:
                try:
                    password = target.password_file.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise NotificationError(f"cannot read the SMTP password file {target.password_file}: "
                                            f"{exc.strerror}") from None
                smtp.login(target.user, password)
            smtp.send_message(message)
    except smtplib.SMTPAuthenticationError as exc:
        raise NotificationError(f"SMTP {target.host}: sign-in refused: {exc.smtp_code} {exc.smtp_error!r}",
                                permanent=True) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise NotificationError(f"SMTP {target.host}: recipients refused: {exc.recipients}", permanent=True) from None
    except smtplib.SMTPResponseException as exc:
        raise NotificationError(f"SMTP {target.host} answered {exc.smtp_code} {exc.smtp_error!r}",
                                permanent=500 <= exc.smtp_code < 600) from None
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise NotificationError(f"SMTP {target.host}:{target.port} unreachable: {exc}") from None
