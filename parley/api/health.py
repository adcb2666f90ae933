"""``GET /healthz``: the process is up and its database answers."""

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
    body = {
        "status": "ok" if accepting else "draining",
        "database": "ok",
        "running_turns": len(runtime.supervisor.running),
    }
    return JSONResponse(body, status_code=200 if accepting else 503)
