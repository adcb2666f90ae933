"""``GET /metrics``: Prometheus's text format (parley/metrics.py), mounted unless ``PARLEY_METRICS=false``.

Unauthenticated, as scrapers expect, and safe to be: no label holds a customer's, session's or request's
id. Keep it to the network Prometheus scrapes from (deploy/nginx.conf does not pass it on).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from parley.api.deps import AppRuntime
from parley.metrics import CONTENT_TYPE_LATEST

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(runtime: AppRuntime) -> Response:
    return Response(runtime.services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
