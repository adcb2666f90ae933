"""Request bodies of at most ``PARLEY_MAX_REQUEST_BYTES``: larger ones get ``413 request_too_large`` unread.

Without a limit a 51 MB import was read, parsed and validated whole (the server peaked at 429-659 MB). A
declared ``Content-Length`` over the limit is answered before the app runs; a body without one (chunked) is
counted as the app reads it and refused at the chunk that crosses the limit. Either way uvicorn discards
the rest of the body as it arrives, and the connection stays usable.

Starlette's own ``RequestBodyLimitMiddleware`` counts the same way, but answers outside a route in plain
text, not in Parley's error shape, and only once the app reads (after routing and auth).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.errors import http_status

CODE = "request_too_large"


class RequestTooLarge(HTTPException):
    """Raised from ``receive``: FastAPI passes an ``HTTPException`` from reading the body on untouched, so
    the app's handler answers it (parley/api/errors.py) like any other."""

    def __init__(self, limit: int) -> None:
        super().__init__(http_status(CODE), f"The request body is larger than the limit of {limit:,} bytes.")


class BodyLimit:
    """Pure ASGI middleware: HTTP request bodies of at most ``max_bytes`` reach the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _refusal(self.max_bytes)(scope, receive, send)
        elif declared is not None:  # the server never hands the app more than was declared
            await self.app(scope, receive, send)
        else:
            await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except RequestTooLarge:  # read outside a route (none does today): answer it here
            if started:
                raise
            await _refusal(self.max_bytes)(scope, receive, send)


def _refusal(limit: int) -> JSONResponse:
    detail = RequestTooLarge(limit).detail
    return JSONResponse({"detail": detail, "code": CODE}, status_code=http_status(CODE))


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # the server refuses a malformed one before the app sees the request
