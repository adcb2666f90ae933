"""The ASGI app: ``create_app`` builds it; its lifespan owns the engine, the store, providers and tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dotenv import dotenv_values
from fastapi import FastAPI

from parley import __version__
from parley.api import docs, errors, web
from parley.api.body_limit import BodyLimit
from parley.api.export import router as export_router
from parley.api.health import router as health_router
from parley.api.metrics import router as metrics_router
from parley.api.models import router as models_router
from parley.api.search import router as search_router
from parley.api.sessions import router as sessions_router
from parley.api.tools import router as tools_router
from parley.api.turns import router as turns_router
from parley.api.websocket import route as websocket_route
from parley.auth import TokenVerifier
from parley.cluster import Cluster
from parley.config import Settings
from parley.metrics import Metrics
from parley.providers.registry import ModelRegistry, build_provider, load_models_file
from parley.recovery import Lease, new_process_id
from parley.services import Runtime, TurnServices
from parley.store.db import create_engine, migrate
from parley.store.repository import Store
from parley.streams import TurnStreams
from parley.tasks import Supervisor
from parley.tools import McpManager, ToolLimits, ToolRegistry, builtin_tools, load_mcp_config

log = logging.getLogger("parley.app")

API_DESCRIPTION = """The REST API of Parley: sessions, history, search, export and import, models and tools.

Chat turns stream over the WebSocket at `/chat/ws`, described as an AsyncAPI document at
[/asyncapi.json](/asyncapi.json) (its prose: docs/protocol.md). Health: `/livez`, `/readyz`, `/healthz`;
Prometheus metrics: `/metrics`.
Every route under `/api/v1` takes `Authorization: Bearer <JWT>`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    verifier = TokenVerifier.from_settings(settings)  # fail at build time, not at the first request
    models = load_models_file(settings.models_file)
    mcp_servers = load_mcp_config(settings.mcp_file) if settings.mcp_file else []  # ValueError: refused
    limits = ToolLimits(settings.tool_timeout_s, settings.tool_max_output_chars)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.resolved_database_url)
        registry = ModelRegistry.from_config(models, build_provider, env=provider_env(), dev=settings.dev)
        try:
            await migrate(engine)
            # MCP servers start with the app (one that fails is logged and left out) and stop after the
            # turns have drained, so no running turn loses a tool midway.
            async with McpManager(mcp_servers) as mcp:
                tools = ToolRegistry([*builtin_tools(), *mcp.tools()], limits)
                supervisor = Supervisor()
                metrics = Metrics(settings.metrics)
                metrics.providers(registry.provider_names())
                store = Store(engine, new_process_id(), metrics)
                streams = TurnStreams(
                    settings.resume_ttl_s, settings.resume_buffer_bytes, settings.resume_turn_bytes
                )
                cluster = None
                if settings.redis_url:
                    lease_s, ttl_s = settings.owner_lease_s, settings.resume_ttl_s
                    cluster = Cluster(settings.redis_url, streams, store, store.owner_id, lease_s, ttl_s)
                services = TurnServices(settings, store, registry, streams, supervisor, tools, cluster)
                runtime = Runtime(settings, verifier, services, supervisor, mcp)
                lease = Lease(
                    store,
                    settings.owner_lease_s,
                    settings.checkpoint_interval_s,
                    recover=cluster.recover if cluster is not None else None,
                )
                if cluster is not None:
                    await cluster.start()
                await lease.start()  # answers left streaming by a crashed process are closed now
                background = [
                    asyncio.create_task(lease.run(), name="parley-lease"),
                    asyncio.create_task(streams.run_expiry(), name="parley-resume-expiry"),
                ]
                if metrics.enabled:
                    background.append(asyncio.create_task(metrics.run_flush(), name="parley-metrics-flush"))
                app.state.runtime = runtime
                try:
                    yield
                    await runtime.supervisor.drain(settings.shutdown_grace_s)
                finally:
                    await _stop(background)
                    metrics.flush()
                    if cluster is not None:
                        await cluster.close()  # the turns' last events reach the other processes
                    await lease.stop()
                    await store.close()
        finally:
            await registry.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Parley",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by parley/api/docs.py with their own assets: no CDN
        redoc_url=None,
    )
    errors.install(app)
    docs.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.include_router(health_router)
    if settings.metrics:
        app.include_router(metrics_router)
    # export before sessions: /sessions/import is not a session id.
    routers = (export_router, sessions_router, search_router, models_router, tools_router, turns_router)
    for router in routers:
        app.include_router(router, prefix="/api/v1", responses=errors.error_responses(*errors.ANY_ROUTE))
    app.router.routes.append(websocket_route)
    web.install(app, settings.dev)
    return app


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def provider_env() -> dict[str, str]:
    """Where provider keys and base URLs are looked up: ``.env`` values, overridden by the environment."""
    values = {k: v for k, v in dotenv_values(".env").items() if v is not None}
    return {**values, **os.environ}
