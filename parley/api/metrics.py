"""``GET /metrics``: Prometheus's text format (parley/metrics.py), mounted unless ``PARLEY_METRICS=false``.

Unauthenticated, as scrapers expect, and safe to be: no label holds a customer's, session's or request's
id. Keep it to the network Prometheus scrapes from (deploy/nginx.conf does not pass it on).
"""

from __future__ import annotations

import gzip

from fastapi import APIRouter, Request
from fastapi.responses import Response

from parley.api.deps import AppRuntime

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, runtime: AppRuntime) -> Response:
    """The text format, or OpenMetrics when the scraper's ``Accept`` prefers it (Prometheus's default);
    gzipped when it accepts that."""
    body, content_type = runtime.services.metrics.exposition(request.headers.get("accept", ""))
    headers = {"Vary": "Accept, Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=content_type, headers=headers)
