"""``/api/requests``: ask the node to fetch a study from a peer and analyse it (flow/requests.py),
and follow what became of it. Behind the web service's bearer token like the rest of /api.

    POST /api/requests   {"study_uid" | "accession", "source", "route" | "pipeline", "destinations"}
                         -> 201 {"id", "state": "retrieving", ...};  400 with what is wrong
    GET  /api/requests   the newest requests, each with its state read through to its jobs
    GET  /api/requests/{id}
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import NodeConfig
from ..errors import ConfigError, IndexError_
from ..flow.requests import RequestStore
from ..storage.index import Index

log = logging.getLogger(__name__)

_FIELDS = {"study_uid", "accession", "source", "route", "pipeline", "destinations"}


def request_routes(config: NodeConfig, index: Index) -> list[Route]:
    store = RequestStore(index)

    async def create(request: Request) -> Response:
        try:
            body: Any = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        if not isinstance(body, dict) or set(body) - _FIELDS:
            unknown = sorted(set(body) - _FIELDS) if isinstance(body, dict) else []
            return JSONResponse({"error": f"a JSON object of {', '.join(sorted(_FIELDS))}"
                                          + (f"; unknown: {', '.join(unknown)}" if unknown else "")}, status_code=400)
        destinations = body.get("destinations") or []
        if not isinstance(destinations, list) or not all(isinstance(d, str) for d in destinations):
            return JSONResponse({"error": "destinations: a list of peer names"}, status_code=400)
        texts = {k: body.get(k) or "" for k in ("study_uid", "accession", "source", "route", "pipeline")}
        if not all(isinstance(v, str) for v in texts.values()):
            return JSONResponse({"error": "study_uid, accession, source, route and pipeline are text"}, status_code=400)
        if not texts["source"]:
            return JSONResponse({"error": "source: the peer to retrieve from"}, status_code=400)
        try:
            request_id = store.create(config=config, destinations=destinations, origin="api", **texts)
        except ConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except IndexError_ as exc:
            return JSONResponse({"error": f"the index failed: {exc}"}, status_code=503)
        log.info("Web: request %d made by %s", request_id, request.client.host if request.client else "?")
        return JSONResponse(store.get(request_id), status_code=201)

    def listing(request: Request) -> Response:
        try:
            limit = max(1, min(1000, int(request.query_params.get("limit", 100))))
        except ValueError:
            limit = 100
        return JSONResponse(store.list(limit))

    def one(request: Request) -> Response:
        request_id = int(request.path_params["id"])
        found = store.get(request_id) if 0 < request_id < 2**63 else None
        if found is None:
            return JSONResponse({"error": f"no request {request_id}"}, status_code=404)
        return JSONResponse(found)

    return [Route("/api/requests", create, methods=["POST"]), Route("/api/requests", listing),
            Route("/api/requests/{id:int}", one)]
