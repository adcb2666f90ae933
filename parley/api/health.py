"""``GET /healthz``: the process is up, its database answers, and (when configured) whether Redis does."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from parley.api.deps import AppRuntime

router = APIRouter()
log = logging.getLogger("parley.api")


@router.get("/healthz")
async def healthz(runtime: AppRuntime) -> JSONResponse:
    try:
        await runtime.store.ping()
    except (SQLAlchemyError, OSError):
        log.exception("health check: database unreachable")
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    accepting = runtime.supervisor.accepting
    body: dict[str, object] = {
        "status": "ok" if accepting else "draining",
        "database": "ok",
        "running_turns": len(runtime.supervisor.running),
    }
    if runtime.cluster is not None:
        # Redis down, this process still serves its own turns: "degraded", still 200 (docs/deploy.md).
        reachable = await runtime.cluster.ping()
        body["redis"] = "ok" if reachable else "unreachable"
        if not reachable and accepting:
            body["status"] = "degraded"
    return JSONResponse(body, status_code=200 if accepting else 503)
