"""Model monitoring over HTTP: ``/api/inferences`` (JSON, ``.csv``, ``.parquet``), ``/api/drift``,
``/api/corrections`` and the ``/monitoring`` page (per model version and scanner: windows,
shifts, charts). Behind the web token like every page but /health and /ready."""

from __future__ import annotations

import time
from typing import Any

from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..config import NodeConfig
from ..monitoring import drift as drift_module
from ..monitoring.plots import drift_png
from ..monitoring.records import RecordFilter, query, to_csv, to_parquet
from ..storage.index import Index
from .dashboard import _STYLE

_PAGE = Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Model monitoring</title>
<style>{{ style }} img.chart { border: 1px solid #ccd; margin: .3rem 0 1rem; }</style></head><body>
<h1>Model monitoring</h1>
<div class="sub"><a href="/">dashboard</a> &middot; reference window: each model version's first {{ section.reference_days }} days
on a scanner; recent: the last {{ section.window_days }} days; judged from {{ section.min_records }} records in each &middot;
JSON: <a href="/api/drift">drift</a>, <a href="/api/inferences">inferences</a> (<a href="/api/inferences.csv">CSV</a>,
<a href="/api/inferences.parquet">Parquet</a>), <a href="/api/corrections">corrections</a></div>
<table id="drift"><tr><th>model on scanner</th><th>records (ref / recent)</th><th>acceptance</th><th>median gate distance</th>
<th>mean confidence</th><th>drift</th></tr>
{% for d in drifts %}<tr><td>{{ d.key }}</td><td>{{ d.reference.count }} / {{ d.recent.count }}</td>
<td>{{ pct(d.reference.acceptance_rate) }} &rarr; {{ pct(d.recent.acceptance_rate) }}</td>
<td>{{ num(d.reference.distance_median) }} &rarr; {{ num(d.recent.distance_median) }}</td>
<td>{{ num(d.reference.confidence_mean) }} &rarr; {{ num(d.recent.confidence_mean) }}</td>
<td class="state {{ 'dead' if d.reasons else 'done' }}">{{ d.reasons | join('; ') if d.reasons else ('none' if d.judged else 'too few records to judge') }}</td></tr>
<tr><td colspan="6"><img class="chart" alt="gate distance and confidence of {{ d.key }}" src="/monitoring/chart.png?model={{ d.model | urlencode }}&version={{ d.model_version | urlencode }}&scanner={{ d.scanner | urlencode }}"></td></tr>
{% else %}<tr><td colspan="6">no inference recorded yet</td></tr>{% endfor %}
</table>
<h2>Recent inferences</h2>
<table id="inferences"><tr><th>when</th><th>job</th><th>model</th><th>outcome</th><th>delivery</th><th>gate distance</th>
<th>mean confidence</th><th>scanner</th><th>series</th></tr>
{% for r in records %}<tr><td>{{ when(r.created_at) }}</td><td>{{ r.job_id }}</td><td>{{ r.model }} {{ r.model_version }}</td>
<td class="state {{ 'done' if r.outcome == 'analysed' else 'failed' if r.outcome == 'failed' else 'not_applicable' }}">{{ r.outcome }}</td>
<td>{{ r.delivery }}</td><td>{{ num(r.gate_distance) }}</td><td>{{ num(r.mean_confidence) }}</td><td>{{ r.scanner }}</td>
<td>{{ r.series_description }}</td></tr>
{% else %}<tr><td colspan="9">none yet</td></tr>{% endfor %}
</table>
<h2>Corrections (radiologists' edits of the node's segmentations)</h2>
<table id="corrections"><tr><th>when</th><th>model</th><th>scanner</th><th>source series</th><th>mean Dice</th><th>per segment (Dice, mean surface distance mm)</th></tr>
{% for c in corrections %}<tr><td>{{ when(c.created_at) }}</td><td>{{ c.model }} {{ c.model_version }}</td><td>{{ c.scanner }}</td>
<td><code>{{ c.source_series_uid }}</code></td><td>{{ num(c.mean_dice) }}</td>
<td>{% for s in c.segments %}{{ s.name }} {{ num(s.dice) }}, {{ num(s.mean_surface_mm) }} mm{% if not loop.last %}; {% endif %}{% endfor %}</td></tr>
{% else %}<tr><td colspan="6">none received</td></tr>{% endfor %}
</table></body></html>""")


def _number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.0f} %"


def _filter(request: Request) -> RecordFilter:
    params = request.query_params

    def number(name: str) -> float | None:
        try:
            return float(params[name]) if name in params else None
        except ValueError:
            return None

    return RecordFilter(model=params.get("model") or None, scanner=params.get("scanner") or None,
                        outcome=params.get("outcome") or None, since=number("since"), until=number("until"),
                        limit=int(number("limit") or 1000))


def monitoring_routes(config: NodeConfig, index: Index) -> list[Route]:
    from ..monitoring.corrections import recent_corrections

    section = config.monitoring

    def inferences(request: Request) -> Response:
        rows = query(index, _filter(request))
        if request.url.path.endswith(".csv"):
            return Response(to_csv(rows), media_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="inferences.csv"'})
        if request.url.path.endswith(".parquet"):
            try:
                return Response(to_parquet(rows), media_type="application/vnd.apache.parquet",
                                headers={"Content-Disposition": 'attachment; filename="inferences.parquet"'})
            except ImportError as exc:
                return JSONResponse({"error": str(exc)}, status_code=501)
        return JSONResponse(rows)

    def drift(request: Request) -> Response:
        return JSONResponse([d.summary() for d in drift_module.measure(index, section, time.time())])

    def corrections(request: Request) -> Response:
        return JSONResponse(recent_corrections(index))

    def page(request: Request) -> Response:
        return HTMLResponse(_PAGE.render(style=_STYLE, section=section, drifts=drift_module.measure(index, section, time.time()),
                                         corrections=recent_corrections(index, 50), num=_number, pct=_percent,
                                         records=query(index, RecordFilter(limit=50)),
                                         when=lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(float(t)))))

    def chart(request: Request) -> Response:
        params = request.query_params
        found = [d for d in drift_module.measure(index, section, time.time())
                 if (d.model, d.model_version, d.scanner) == (params.get("model"), params.get("version"), params.get("scanner"))]
        if not found:
            return JSONResponse({"error": "no such model version on that scanner"}, status_code=404)
        rows = query(index, RecordFilter(model=found[0].model, scanner=found[0].scanner, limit=100000))
        points = [(float(r["created_at"]), r["gate_distance"], r["mean_confidence"]) for r in reversed(rows)
                  if r["model_version"] == found[0].model_version and r["outcome"] in ("analysed", "declined")]
        return Response(drift_png(found[0], points), media_type="image/png")

    return [Route("/api/inferences", inferences), Route("/api/inferences.csv", inferences),
            Route("/api/inferences.parquet", inferences), Route("/api/drift", drift), Route("/api/corrections", corrections),
            Route("/monitoring", page), Route("/monitoring/chart.png", chart)]
