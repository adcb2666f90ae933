"""``/chat/ws``: authenticate before the upgrade, then hand the socket to a ``Connection``.

Mounted as a plain Starlette route (``route``), not through FastAPI's router: FastAPI's dependency
machinery keeps two exit stacks and a copy of the scope alive for the life of every socket, about 5 KiB per
idle connection, and adds a wrapper to every frame sent; this endpoint uses none of it.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from parley.auth import AuthError, token_from
from parley.connection import Connection
from parley.services import runtime_of

log = logging.getLogger("parley.api")

DIALECTS = ("camel", "snake")


async def chat_ws(websocket: WebSocket) -> None:
    runtime = runtime_of(websocket)
    try:
        identity = runtime.verifier.verify(token_from(websocket.query_params, websocket.headers))
    except AuthError as exc:
        log.info("refused a WebSocket: %s", exc)
        await _deny(
            websocket, 401, "unauthorized", "A valid token is required (?token= or Authorization: Bearer)."
        )
        return
    dialect = websocket.query_params.get("events", runtime.settings.event_dialect)
    if dialect not in DIALECTS:
        await _deny(websocket, 400, "invalid_request", "events must be camel or snake.")
        return
    if not runtime.supervisor.accepting:
        await _deny(websocket, 503, "server_shutting_down", "The server is shutting down.")
        return
    await websocket.accept()
    connection = Connection(websocket, identity, runtime.services, runtime.supervisor, dialect)  # type: ignore[arg-type]
    metrics = runtime.services.metrics
    metrics.connection_opened()
    try:
        await connection.serve()
    finally:
        metrics.connection_closed()


async def _deny(websocket: WebSocket, status_code: int, code: str, message: str) -> None:
    """Refuse before the upgrade with a plain HTTP response."""
    await websocket.send_denial_response(
        JSONResponse({"detail": message, "code": code}, status_code=status_code)
    )


route = WebSocketRoute("/chat/ws", chat_ws)
