"""REST errors: JSON ``{"detail": "<sentence>", "code": "<stable_code>"}`` with the right status.

Routes raise ``ApiError`` or any of Parley's own errors (``SessionNotFound``, ``DatabaseFailed``, … from
parley/errors.py, the WebSocket's too); the status is the one ``CODES`` gives the code, so a route never
shapes an error body itself. FastAPI's own 422 (a body or query that does not fit its schema) is
``invalid_request`` with a sentence naming the field (parley/api/validation.py), never the value sent.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from parley.api import validation
from parley.errors import DatabaseFailed, ParleyError, http_status
from parley.store.pagination import InvalidCursor

log = logging.getLogger("parley.api")

HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


class ErrorOut(BaseModel):
    detail: str
    code: str


class ApiError(ParleyError):
    """A REST-only refusal (``turn_not_found``, ``unauthorized``…): a code of ``CODES`` and a sentence,
    with the response headers it needs."""

    def __init__(self, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail, code=code)
        self.headers = headers


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can answer (``ANY_ROUTE``'s, which any
    /api/v1 route can answer, are added by ``include_router`` in app.py)."""
    described = {
        400: "The body cannot be read, or a cursor or an import cannot be used (code says which)",
        401: "No valid bearer token",
        404: "Not one of your sessions or messages (also for malformed ids)",
        413: "The request body is larger than PARLEY_MAX_REQUEST_BYTES",
        422: "A parameter or body field does not fit its schema (detail names it)",
        503: "The database is unavailable",
    }
    return {code: {"model": ErrorOut, "description": described[code]} for code in codes}


ANY_ROUTE = (401, 413, 422, 503)


def install(app: FastAPI) -> None:
    """Register the handlers that turn these errors into JSON responses."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(ParleyError, _parley_error)
    app.add_exception_handler(InvalidCursor, _invalid_cursor)


def _body(status_code: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status_code, headers=headers)


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's and FastAPI's own errors (no route, a body that is not JSON) in the same shape."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (204, 304):  # no body allowed, as Starlette's own handler knows
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return _body(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _body(*validation.refusal(exc))


async def _parley_error(_request: Request, exc: Exception) -> JSONResponse:
    """Any of Parley's errors, with the status ``CODES`` gives its code."""
    assert isinstance(exc, ParleyError)
    if isinstance(exc, DatabaseFailed):
        log.error("REST request failed in the database", exc_info=exc)
        return _body(http_status("database_error"), "database_error", "The database is unavailable.")
    return _body(exc.http_status, exc.code, exc.message, getattr(exc, "headers", None))


async def _invalid_cursor(_request: Request, exc: Exception) -> JSONResponse:
    return _body(http_status("invalid_cursor"), "invalid_cursor", str(exc))
