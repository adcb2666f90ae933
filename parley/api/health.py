"""Health for people and load balancers.

``/healthz``: the process is up, its database answers, and (when configured) whether Redis does.
``/livez``: the process answers (a restart is never the cure for a database that is down).
``/readyz``: send this process traffic? 200 while its database and Redis (when configured) answer and it is
not draining; else 503 with the ``reason``.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from parley.api.deps import AppRuntime

router = APIRouter()
log = logging.getLogger("parley.api")

READY_CHECK_TIMEOUT_S = 2.0  # a load balancer's probe waits little longer; a silent database is not ready


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


@router.get("/livez")
async def livez() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(runtime: AppRuntime) -> JSONResponse:
    body: dict[str, object] = {"status": "ok"}
    if not runtime.supervisor.accepting:
        return _not_ready(body, "draining")
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
            await runtime.store.ping()
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning("not ready: the database is unreachable (%s)", type(exc).__name__)
        body["database"] = "unreachable"
        return _not_ready(body, "database unreachable")
    body["database"] = "ok"
    if runtime.cluster is not None:
        if not await runtime.cluster.ping():
            log.warning("not ready: Redis is unreachable")
            body["redis"] = "unreachable"
            return _not_ready(body, "redis unreachable")
        body["redis"] = "ok"
    return JSONResponse(body)


def _not_ready(body: dict[str, object], reason: str) -> JSONResponse:
    return JSONResponse({**body, "status": "unavailable", "reason": reason}, status_code=503)
