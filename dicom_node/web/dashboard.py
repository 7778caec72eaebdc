"""The dashboard page, rendered on the server (Jinja2, autoescaped; no front-end build, no
script): the queue, recent studies with their rules' and jobs' states and a preview of each
analysed series, requests (retrieve and analyse) with their states, delivery failures with a retry button (a plain form post), the routing rules.
It refreshes itself every 15 s."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jinja2 import Environment

from ..config import NodeConfig

_ENV = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["when"] = lambda t: "" if t is None else datetime.fromtimestamp(float(t)).strftime("%Y-%m-%d %H:%M:%S")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d2330; background: #f6f7f9; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
.sub { color: #5b6272; margin-bottom: 1rem; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: .9rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #e3e6ec; vertical-align: top; }
th { background: #eef0f4; }
.state { font-weight: 600; } .done, .delivered, .complete { color: #1a7f37; } .dead, .failed { color: #b42318; }
.queued, .running, .pending, .receiving, .retrieving, .waiting, .delivering { color: #9a6700; } .not_applicable { color: #5b6272; }
.counts span { display: inline-block; margin-right: 1.2rem; }
code { font-size: .8rem; } img.preview { max-height: 140px; border: 1px solid #ccd; }
button { padding: .2rem .7rem; cursor: pointer; }
"""

_DASHBOARD = _ENV.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><meta http-equiv="refresh" content="15">
<title>{{ config.node.ae_title }}: dicom-node</title><style>{{ style }}</style></head>
<body>
<h1>{{ config.node.ae_title }}</h1>
<div class="sub">DICOM port {{ config.node.port }} on {{ config.node.host }} &middot; {{ now | when }} &middot; <a href="/monitoring">model monitoring</a></div>

<h2>Queue</h2>
<div class="counts" id="job-counts">
{% for state, n in job_counts.items() %}<span class="{{ state }}">{{ state }}: <b>{{ n }}</b></span>{% endfor %}
{% if not job_counts %}<span>no jobs yet</span>{% endif %}
</div>
<table id="queue"><tr><th>job</th><th>route</th><th>pipeline</th><th>series</th><th>state</th><th>attempt</th><th>since</th></tr>
{% for job in queue %}
<tr><td>{{ job.id }}</td><td>{{ job.route }}</td><td>{{ job.pipeline }}</td><td><code>{{ job.series_uid }}</code></td>
<td class="state {{ job.state }}">{{ job.state }}</td><td>{{ job.attempts }} of {{ job.max_attempts }}</td><td>{{ job.created_at | when }}</td></tr>
{% else %}<tr><td colspan="7">nothing queued or running</td></tr>{% endfor %}
</table>

{% if requests %}
<h2>Requests</h2>
<table id="requests"><tr><th>request</th><th>study</th><th>from</th><th>route / pipeline</th><th>state</th><th>detail</th><th>since</th></tr>
{% for r in requests %}
<tr><td>{{ r.id }} ({{ r.origin }})</td><td><code>{{ r.study_uid or ("accession " ~ r.accession) }}</code></td><td>{{ r.source }}</td>
<td>{{ r.route or r.pipeline or "the rules" }}</td><td class="state {{ r.state | replace(" ", "_") }}">{{ r.state }}</td>
<td>{{ r.detail[:200] }}</td><td>{{ r.created_at | when }}</td></tr>
{% endfor %}
</table>
{% endif %}

{% if notifications %}
<h2>Notifications</h2>
<table id="notifications"><tr><th>notification</th><th>event</th><th>to</th><th>state</th><th>attempts</th><th>last error</th><th></th></tr>
{% for n in notifications %}
<tr><td>{{ n.id }}</td><td>{{ n.type }} ({{ n.event_id }})</td><td>{{ n.target }}</td><td class="state {{ n.state }}">{{ n.state }}</td>
<td>{{ n.attempts }}</td><td>{{ n.last_error[:200] }}</td>
<td>{% if n.state != "delivered" %}<form method="post" action="/api/notifications/{{ n.id }}/retry"><button type="submit">Retry now</button></form>{% endif %}</td></tr>
{% endfor %}
</table>
{% endif %}

<h2>Delivery failures</h2>
<div class="counts">{% for state, n in delivery_counts.items() %}<span class="{{ state }}">{{ state }}: <b>{{ n }}</b></span>{% endfor %}</div>
<table id="failures"><tr><th>delivery</th><th>to</th><th>what</th><th>attempts</th><th>state</th><th>last error</th><th></th></tr>
{% for d in failing %}
<tr><td>{{ d.id }}</td><td>{{ d.peer }}</td><td>{{ d.object }} of <code>{{ d.job_key }}</code></td><td>{{ d.attempts }}</td>
<td class="state {{ d.state }}">{{ d.state }}</td><td>{{ d.last_error }}</td>
<td><form method="post" action="/api/deliveries/{{ d.id }}/retry"><button type="submit" data-delivery="{{ d.id }}">Retry now</button></form></td></tr>
{% else %}<tr><td colspan="7">none</td></tr>{% endfor %}
</table>

<h2>Recent studies</h2>
<table id="studies"><tr><th>patient</th><th>study / series</th><th>instances</th><th>state</th><th>rules and jobs</th><th>preview</th></tr>
{% for study in studies %}
<tr><td>{{ study.patient_name }} ({{ study.patient_id }})</td><td><b>{{ study.study_description or "study" }}</b><br><code>{{ study.study_uid }}</code></td>
<td>{{ study.series | sum(attribute="instance_count") }}</td><td class="state {{ study.state }}">{{ study.state }} v{{ study.version }}</td><td></td><td></td></tr>
{% for s in study.series %}
<tr><td></td><td>&nbsp;&nbsp;{{ s.modality }} {{ s.series_description }}<br>&nbsp;&nbsp;<code>{{ s.series_uid }}</code></td>
<td>{{ s.instance_count }}</td><td class="state {{ s.state }}">{{ s.state }} v{{ s.version }}</td>
<td>{% for job in series_jobs.get(s.series_uid, []) %}<div>{{ job.route }}: {{ job.ran_pipeline or job.pipeline }}
 <span class="state {{ job.state }}">{{ job.state }}</span>{% if job.last_error %} &middot; {{ job.last_error[:160] }}{% endif %}
{% set lung = lung_numbers.get(job.id) %}{% if lung %}<table class="lung"><tr><th>lung density ({{ lung.slice_thickness_mm }} mm)</th><th>volume (mL)</th><th>MLD (HU)</th><th>LAA%-950</th><th>Perc15 (HU)</th></tr>
{% for r in lung.rows %}<tr><td>{{ r.region }}</td><td>{{ r.volume_ml }}</td><td>{{ r.mld_hu }}</td><td>{{ "withheld" if r.laa950_percent is none else r.laa950_percent }}</td><td>{{ "withheld" if r.perc15_hu is none else r.perc15_hu }}</td></tr>{% endfor %}
{% for why in lung.withheld %}<tr><td colspan="5" class="sub">withheld: {{ why }}</td></tr>{% endfor %}</table>{% endif %}</div>{% else %}{% if s.state == "complete" %}no rule acted{% endif %}{% endfor %}</td>
<td>{% for job in series_jobs.get(s.series_uid, []) if job.id in previews %}<img class="preview" alt="segmentation preview of job {{ job.id }}" src="/api/jobs/{{ job.id }}/preview.png">{% endfor %}</td></tr>
{% endfor %}
{% else %}<tr><td colspan="6">no studies received yet</td></tr>{% endfor %}
</table>

<h2>Routing rules</h2>
<ol id="routes">{% for line in routes %}<li><code>{{ line }}</code></li>{% else %}<li>none configured</li>{% endfor %}</ol>
<p class="sub">JSON: <a href="/api/studies">studies</a> &middot; <a href="/api/jobs">jobs</a> &middot; <a href="/api/deliveries">deliveries</a>
&middot; <a href="/api/requests">requests</a> &middot; <a href="/api/events">events</a>
&middot; <a href="/api/notifications">notifications</a> &middot; <a href="/api/peers">peers</a> &middot; <a href="/api/routes">routes</a> &middot; <a href="/api/audit">audit</a>
&middot; <a href="/metrics">metrics</a> &middot; <a href="/ready">ready</a></p>
</body></html>
""")

_LOGIN = _ENV.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>dicom-node: sign in</title><style>{{ style }}</style></head>
<body><h1>dicom-node</h1><p class="sub">This node's web service needs its token (the file named by web.token_file).</p>
{% if error %}<p class="dead">{{ error }}</p>{% endif %}
<form method="post" action="/login"><input type="password" name="token" size="48" autofocus> <button type="submit">Sign in</button></form>
</body></html>
""")


def render_dashboard(config: NodeConfig, **context: Any) -> str:
    import time

    context.setdefault("lung_numbers", {})
    return _DASHBOARD.render(config=config, style=_STYLE, now=time.time(), **context)


def render_login(error: str) -> str:
    return _LOGIN.render(style=_STYLE, error=error)
