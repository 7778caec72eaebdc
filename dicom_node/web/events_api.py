"""``/api/events`` and ``/api/notifications``: the node's event stream and what became of each
notification (notify/), with a retry for one that is dead. Behind the web token like all /api."""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..notify.notifier import recent, retry_notification
from ..storage.index import Index

log = logging.getLogger(__name__)


def event_routes(index: Index) -> list[Route]:
    def listing(request: Request) -> Response:
        try:
            limit = max(1, min(1000, int(request.query_params.get("limit", 100))))
        except ValueError:
            limit = 100
        found = recent(index, limit)
        return JSONResponse(found["events"] if request.url.path.endswith("/events") else found["notifications"])

    def retry(request: Request) -> Response:
        notification_id = int(request.path_params["id"])
        done = 0 < notification_id < 2**63 and retry_notification(index, notification_id, time.time())
        log.info("Web: notification %d %s", notification_id, "queued again" if done else "not retried")
        if "application/x-www-form-urlencoded" in request.headers.get("content-type", ""):
            return RedirectResponse("/", status_code=303)  # the dashboard's button
        return JSONResponse({"retried": done}, status_code=200 if done else 409)

    return [Route("/api/events", listing), Route("/api/notifications", listing),
            Route("/api/notifications/{id:int}/retry", retry, methods=["POST"])]
