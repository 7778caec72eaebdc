"""The node's web service: health and readiness for orchestrators, Prometheus metrics, a JSON API,
a server-rendered dashboard and the STOW-RS endpoint (dicomweb/stow_server.py, its clients
signing in with tokens of their own), on Starlette under uvicorn, started by ``serve`` (``web:``).

It only reads the index, apart from two writes an operator asks for (queue a failed delivery
or a dead job again), which go through the same Outbox and JobQueue methods as
``dicom-node jobs --retry``. Off loopback every request but /health and /ready needs the bearer
token (``Authorization: Bearer``, or the cookie /login sets for a browser).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..config import NodeConfig
from ..dicomweb.stow_server import StowEndpoint
from ..flow.job_engine import job_queue
from ..flow.outbox import Outbox
from ..flow.requests import RequestStore
from ..flow.route_check import describe_route
from ..notify.notifier import recent as recent_notifications
from ..storage.audit import AuditLog
from ..storage.events import emit_alert
from ..storage.index import Index
from ..storage.store import InstanceStore
from .dashboard import render_dashboard, render_login
from .events_api import event_routes
from .guard import STREAMED_PREFIX, LoginThrottle, RequestGuard, Sessions, allowed_host_names, deadline_protocol
from .metrics import exposition
from .monitoring_api import monitoring_routes
from .requests_api import request_routes

log = logging.getLogger(__name__)

COOKIE = "dicom_node_token"
OPEN_PATHS = ("/health", "/ready", "/login")


def create_app(config: NodeConfig, index: Index, readiness: Callable[[], list[str]] | None = None,
               token: str | None = None, audit: AuditLog | None = None, store: InstanceStore | None = None) -> Any:
    """The ASGI app, behind web_guard's RequestGuard. ``readiness``: what keeps the node from
    taking work ([] when ready); ``audit``: where failed sign-ins are recorded; ``store``: where
    STOW-RS instances go (the configured store by default)."""
    jobs, outbox = job_queue(index, config), Outbox(index)
    store = store or InstanceStore(config.storage.path, config.storage.durability,
                                   min_free_bytes=config.storage.min_free_mb * 2**20)
    stow = StowEndpoint(config, index, store, audit)
    readiness = readiness or (lambda: [])
    sessions = Sessions(token, config.web.session_hours * 3600) if token else None
    throttle = LoginThrottle(config.web.login_attempts)

    def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "pid": os.getpid()})

    def ready(request: Request) -> Response:
        problems = list(readiness())
        try:
            index.query("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - any index failure means not ready
            problems.append(f"index: {exc}")
        try:
            free_mb = shutil.disk_usage(config.storage.path).free / 2**20
            if free_mb < config.storage.min_free_mb:
                problems.append(f"storage: {free_mb:.0f} MB free, below storage.min_free_mb {config.storage.min_free_mb}")
        except OSError as exc:
            problems.append(f"storage: {exc}")
        return JSONResponse({"ready": not problems, "problems": problems}, status_code=200 if not problems else 503)

    def metrics(request: Request) -> Response:
        body, content_type = exposition(config.index.location, config.storage.path)
        return Response(body, media_type=content_type)

    def studies(request: Request) -> Response:
        return JSONResponse(index.studies(limit=_limit(request, 100)))

    def study(request: Request) -> Response:
        uid = request.path_params["uid"]
        rows = index.query("SELECT * FROM studies WHERE study_uid = ?", (uid,)) if _is_uid(uid) else []
        if not rows:
            return JSONResponse({"error": f"no study {uid}"}, status_code=404)
        series_rows = index.query("SELECT * FROM series WHERE study_uid = ? ORDER BY series_number, first_received_at", (uid,))
        decisions = index.query("SELECT * FROM study_routes WHERE study_uid = ? ORDER BY version, route", (uid,))
        return JSONResponse({**dict(rows[0]), "series": [dict(r) for r in series_rows],
                             "study_rules": [dict(r) for r in decisions]})

    def series(request: Request) -> Response:
        uid = request.path_params["uid"]
        rows = index.query("SELECT * FROM series WHERE series_uid = ?", (uid,))
        if not rows:
            return JSONResponse({"error": f"no series {uid}"}, status_code=404)
        job_rows = index.query("SELECT * FROM jobs WHERE series_uid = ? ORDER BY id", (uid,))
        return JSONResponse({**dict(rows[0]), "jobs": [_job(r) for r in job_rows]})

    def job_list(request: Request) -> Response:
        state = request.query_params.get("state")
        sql, params = "SELECT * FROM jobs", ()
        if state:
            sql, params = sql + " WHERE state = ?", (state,)
        rows = index.query(sql + " ORDER BY id DESC LIMIT ?", (*params, _limit(request, 100)))
        return JSONResponse({"counts": jobs.counts(), "jobs": [_job(r) for r in rows]})

    def delivery_list(request: Request) -> Response:
        state = request.query_params.get("state")
        sql, params = "SELECT * FROM deliveries", ()
        if state == "failing":
            sql += " WHERE state = 'dead' OR (state = 'pending' AND attempts > 0)"
        elif state:
            sql, params = sql + " WHERE state = ?", (state,)
        rows = index.query(sql + " ORDER BY id DESC LIMIT ?", (*params, _limit(request, 100)))
        return JSONResponse({"counts": outbox.counts(), "deliveries": [_delivery(r) for r in rows]})

    def peers(request: Request) -> Response:
        counts: dict[str, dict[str, int]] = {}
        for row in index.query("SELECT peer, state, count(*) AS n FROM deliveries GROUP BY peer, state"):
            counts.setdefault(row["peer"], {})[row["state"]] = row["n"]
        return JSONResponse([{"name": p.name, "ae_title": p.ae_title, "host": p.host, "port": p.port, "send": p.send,
                              "receive": p.receive, "deliveries": counts.get(p.name, {})} for p in config.peers])

    def routes(request: Request) -> Response:
        return JSONResponse([{"name": r.name, "trigger": r.trigger, "fallback": r.fallback, "on_match": r.on_match,
                              "condition": r.condition.describe(), "pipeline": r.pipeline_names,
                              **r.model_dump(mode="json", include={"destinations", "forward"}), "discard": r.discard,
                              "summary": describe_route(r, config)} for r in config.routes])

    def audit_tail(request: Request) -> Response:
        return JSONResponse(tail_audit(config.audit.path, _limit(request, 200)))

    def retry_delivery(request: Request) -> Response:
        delivery_id = _row_id(request)
        if delivery_id is None:
            return JSONResponse({"error": "no such delivery"}, status_code=404)
        done = outbox.retry(delivery_id, time.time(), include_pending=True)
        log.info("Web: delivery %d %s", delivery_id, "queued again" if done else "not retried (delivered or unknown)")
        return _answer(request, {"retried": done}, 200 if done else 409)

    def retry_job(request: Request) -> Response:
        job_id = _row_id(request)
        if job_id is None:
            return JSONResponse({"error": "no such job"}, status_code=404)
        done = jobs.retry(job_id, time.time())
        log.info("Web: job %d %s", job_id, "queued again" if done else "not retried (not dead-lettered)")
        return _answer(request, {"retried": done}, 200 if done else 409)

    def preview(request: Request) -> Response:
        from ..results.preview import job_preview

        job_id = _row_id(request)
        if job_id is None:
            return JSONResponse({"error": "no such job"}, status_code=404)
        try:
            png = job_preview(index, job_id)
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return Response(png.read_bytes(), media_type="image/png", headers={"Cache-Control": "max-age=300"})

    def dashboard(request: Request) -> Response:
        failing = index.query("SELECT * FROM deliveries WHERE state = 'dead' OR (state = 'pending' AND attempts > 0) "
                              "ORDER BY id DESC LIMIT 50")
        queue = index.query("SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY priority DESC, id LIMIT 50")
        recent = index.studies(limit=20)
        series_jobs: dict[str, list[dict[str, Any]]] = {}
        recent_jobs = "SELECT id FROM jobs WHERE study_uid IN (SELECT study_uid FROM studies ORDER BY last_received_at DESC LIMIT 20)"
        for row in index.query(f"SELECT * FROM jobs WHERE id IN ({recent_jobs}) ORDER BY id"):
            series_jobs.setdefault(row["series_uid"], []).append(_job(row))
        lung_numbers = lung_rows(index, recent_jobs)
        # Only the shown jobs' SEGs, not every delivery the node ever made.
        seg_jobs = {r["job_id"] for r in index.query(
            f"SELECT DISTINCT job_id FROM deliveries WHERE object = 'seg' AND job_id IN ({recent_jobs})")}
        html = render_dashboard(config=config, job_counts=jobs.counts(), delivery_counts=outbox.counts(),
                                requests=RequestStore(index).list(20),
                                notifications=recent_notifications(index, 20)["notifications"],
                                queue=[_job(r) for r in queue], studies=recent, series_jobs=series_jobs,
                                failing=[_delivery(r) for r in failing], previews=seg_jobs, lung_numbers=lung_numbers,
                                routes=[describe_route(r, config) for r in config.routes])
        return HTMLResponse(html)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return HTMLResponse(render_login(error=""))
        client = request.client.host if request.client else "?"
        now = time.time()
        wait = throttle.retry_after(client, now)
        if wait > 0:
            log.warning("Web: sign-in from %s refused: too many failed attempts (%.0f s to wait)", client, wait)
            return HTMLResponse(render_login(error="Too many failed attempts; try again later."), status_code=429,
                                headers={"Retry-After": str(int(wait) + 1)})
        given = parse_qs((await request.body()).decode("utf-8", "replace")).get("token", [""])[0]
        if token is None or sessions is None or not hmac.compare_digest(given.encode(), token.encode()):
            failures = throttle.failed(client, now)
            log.warning("Web: failed sign-in from %s (%d within %.0f s)", client, failures, throttle.window)
            if audit is not None:
                emit_alert(index, "security.alert", f"login_failed:{client}", {"alert": "login_failed", "address": client,
                                                                               "reason": f"{failures} failed sign-in(s)"})
                audit.write("security_alert", alert="login_failed", object=f"{request.url.scheme}://{request.url.netloc}/login",
                            address=client, description=f"failed sign-in to the web service ({failures} within "
                                                        f"{throttle.window:.0f} s)")
            return HTMLResponse(render_login(error="That is not the node's token."), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, sessions.issue(now), max_age=int(sessions.lifetime_seconds), httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    middleware = [Middleware(_TokenCheck, token=token, sessions=sessions)] if token and sessions else []
    app = Starlette(routes=[
        Route("/", dashboard),
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/api/studies", studies),
        Route("/api/studies/{uid}", study),
        Route("/api/series/{uid}", series),
        Route("/api/jobs", job_list),
        Route("/api/jobs/{id:int}/retry", retry_job, methods=["POST"]),
        Route("/api/jobs/{id:int}/preview.png", preview),
        Route("/api/deliveries", delivery_list),
        Route("/api/deliveries/{id:int}/retry", retry_delivery, methods=["POST"]),
        Route("/api/peers", peers),
        Route("/api/routes", routes),
        Route("/api/audit", audit_tail),
        *request_routes(config, index),
        *event_routes(index),
        *monitoring_routes(config, index),
        Route("/dicomweb/studies", stow.handle, methods=["POST"]),
        Route("/dicomweb/studies/{study}", stow.handle, methods=["POST"]),
        Route("/dicomweb/{client}/studies", stow.handle, methods=["POST"]),
        Route("/dicomweb/{client}/studies/{study}", stow.handle, methods=["POST"]),
    ], middleware=middleware)
    return RequestGuard(app, allowed_host_names(config.web.allowed_hosts, config.web.host), config.web.max_body_bytes,
                        config.web.max_header_bytes)


class _TokenCheck(BaseHTTPMiddleware):
    """Every path but OPEN_PATHS needs the bearer token, or a browser's valid session cookie."""

    def __init__(self, app: Any, token: str, sessions: Sessions) -> None:
        super().__init__(app)
        self.token = token.encode()
        self.sessions = sessions

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path in OPEN_PATHS or request.url.path.startswith(STREAMED_PREFIX):  # STOW-RS: its own tokens
            return await call_next(request)
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            if hmac.compare_digest(header[7:].strip().encode(), self.token):
                return await call_next(request)
        elif self.sessions.valid(request.cookies.get(COOKIE, ""), time.time()):
            return await call_next(request)
        log.warning("Web: refused %s %s from %s: no valid token", request.method, request.url.path,
                    request.client.host if request.client else "?")
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/login", status_code=303)
        return JSONResponse({"error": "a bearer token is required"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})


def _answer(request: Request, body: dict[str, Any], status: int) -> Response:
    """A form post from the dashboard goes back to it; an API call gets JSON."""
    if "application/x-www-form-urlencoded" in request.headers.get("content-type", "") or \
            "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/", status_code=303)
    return JSONResponse(body, status_code=status)


def _limit(request: Request, default: int) -> int:
    try:
        return max(1, min(1000, int(request.query_params.get("limit", default))))
    except ValueError:
        return default


def _row_id(request: Request) -> int | None:
    """The path's row id, None when no row can have it (SQLite's and PostgreSQL's ids are 64-bit)."""
    value = int(request.path_params["id"])
    return value if 0 < value < 2**63 else None


def _is_uid(text: str) -> bool:
    return 0 < len(text) <= 64 and all(c.isdigit() or c == "." for c in text)


def lung_rows(index: Index, job_ids_sql: str) -> dict[int, dict[str, Any]]:
    """Per shown job, the lung densitometry its ``job.done`` event carried (rows and what was
    withheld): a lung clinic reads these numbers off the dashboard."""
    found: dict[int, dict[str, Any]] = {}
    for row in index.query(f"SELECT job_id, payload FROM events WHERE type = 'job.done' AND job_id IN ({job_ids_sql})"):
        density = json.loads(row["payload"] or "{}").get("lung_density")
        if density:
            found[int(row["job_id"])] = density
    return found


def _job(row: Any) -> dict[str, Any]:
    job = dict(row)
    job["destinations"] = json.loads(job["destinations"])
    return job


def _delivery(row: Any) -> dict[str, Any]:
    delivery = dict(row)
    delivery["candidates"] = json.loads(delivery["candidates"])
    return delivery


def tail_audit(path: Path, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` audit records, newest last, read from the end of the file."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 1024 * max(1, limit)))
            lines = handle.read().splitlines()[-limit:]
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # the first, cut line of the window
    return records


class WebServer:
    """uvicorn in a thread of the node's process (no signal handlers of its own: the node's
    supervisor owns SIGTERM and stops it)."""

    def __init__(self, config: NodeConfig, index: Index, readiness: Callable[[], list[str]] | None = None,
                 audit: AuditLog | None = None, store: InstanceStore | None = None) -> None:
        self.config = config
        web = config.web
        app = create_app(config, index, readiness, token=web.token(), audit=audit, store=store)
        tls = {"ssl_certfile": str(web.tls.certificate), "ssl_keyfile": str(web.tls.private_key)} if web.tls else {}
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=web.host, port=web.port, log_level="warning", access_log=False, lifespan="off",
            http=deadline_protocol(web.request_timeout_seconds), h11_max_incomplete_event_size=web.max_header_bytes,
            limit_concurrency=web.max_concurrency, timeout_keep_alive=5, **tls))
        self.thread = threading.Thread(target=self._run, name="web", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"web service did not start on {self.config.web.host}:{self.config.web.port} "
                              "(port in use? see the log)")
            time.sleep(0.02)
        log.info("Web service on %s://%s:%d/ (dashboard, /metrics, /health, /ready, /api)",
                 "https" if self.config.web.tls else "http", self.config.web.host if ":" not in self.config.web.host else f"[{self.config.web.host}]", self.port)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
