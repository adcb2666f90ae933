"""Parley's own errors: a stage and a stable code for the client, a clear sentence, the rest for logs.

``CODES`` is the one catalogue of the codes a client can see, on the WebSocket and over REST: each code's
stage (the ``stage`` of a WebSocket ``error`` event) and the HTTP status REST answers it with. The code
strings are a contract (docs/protocol.md §4 and §8, docs/history.md §5 list them); never rename one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Stage = Literal["validation", "auth", "provider", "database", "limits", "internal"]


@dataclass(frozen=True)
class Code:
    stage: Stage
    http_status: int  # REST's answer; a WebSocket-only code has the status it would have


CODES: dict[str, Code] = {
    # validation: the request cannot be served as sent
    "invalid_json": Code("validation", 400),
    "invalid_request": Code("validation", 422),  # REST: 400 for a body that cannot be read at all
    "invalid_cursor": Code("validation", 400),
    "invalid_import": Code("validation", 400),
    "prompt_required": Code("validation", 422),
    "unknown_model": Code("validation", 422),
    "provider_not_configured": Code("validation", 422),
    "not_found": Code("validation", 404),
    "session_not_found": Code("validation", 404),
    "message_not_found": Code("validation", 404),
    "turn_not_found": Code("validation", 404),
    "unknown_tool": Code("validation", 422),
    "tools_not_supported": Code("validation", 422),
    "stream_expired": Code("validation", 410),
    "method_not_allowed": Code("validation", 405),
    # auth
    "unauthorized": Code("auth", 401),
    "forbidden": Code("auth", 403),
    # limits
    "prompt_too_long": Code("limits", 413),
    "request_too_large": Code("limits", 413),
    # a request head refused at the edge, before the app (parley/uvicorn_ws.py)
    "request_line_too_long": Code("limits", 414),
    "headers_too_large": Code("limits", 431),
    "request_timeout": Code("limits", 408),
    # not an ``error`` event: the ``code`` of the ``cancelled`` event, and the stored ``error_code``, of an
    # answer stopped at PARLEY_MAX_TURN_S
    "turn_too_long": Code("limits", 408),
    # the same, of an answer stopped because its session (or its branch) was deleted
    "session_deleted": Code("validation", 410),
    "too_many_requests": Code("limits", 429),
    "tool_step_limit": Code("limits", 422),
    # provider
    "provider_error": Code("provider", 502),
    "rate_limited": Code("provider", 429),
    "context_too_long": Code("provider", 422),
    # database
    "database_error": Code("database", 503),
    "interrupted": Code("database", 503),
    # internal
    "server_shutting_down": Code("internal", 503),
    # scale-out: a turn of another process cannot be reached while Redis is unreachable
    "cluster_unavailable": Code("internal", 503),
    "internal_error": Code("internal", 500),
}


def http_status(code: str) -> int:
    """The HTTP status REST answers ``code`` with (500 for a code the catalogue does not hold)."""
    known = CODES.get(code)
    return known.http_status if known is not None else 500


class ParleyError(Exception):
    """An error a client may see. ``message`` never holds stack traces, SQL or secrets.

    ``stage`` is the class's, else the catalogue's for ``code``."""

    stage: Stage = "internal"
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, stage: Stage | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if stage is not None:
            self.stage = stage
        elif code is not None and code in CODES:
            self.stage = CODES[code].stage

    @property
    def http_status(self) -> int:
        return http_status(self.code)


class ValidationFailed(ParleyError):
    stage = "validation"
    code = "invalid_request"


class NotFound(ValidationFailed):
    """Not one of the customer's: unknown, another customer's and malformed ids look the same."""

    code = "not_found"


class SessionNotFound(NotFound):
    """The one ``session_not_found``, for the WebSocket, REST and the store alike."""

    code = "session_not_found"

    def __init__(self) -> None:
        super().__init__("Session not found.")


class MessageNotFound(NotFound):
    """The one ``message_not_found``; ``field`` names where the client gave the id, when it did."""

    code = "message_not_found"

    def __init__(self, field: str | None = None) -> None:
        where = f"{field}: " if field else ""
        super().__init__(f"{where}Message not found in this session.")


class Forbidden(ParleyError):
    stage = "auth"
    code = "forbidden"


class LimitExceeded(ParleyError):
    stage = "limits"
    code = "too_many_requests"


class ProviderFailed(ParleyError):
    """The model provider failed; ``retryable`` marks failures worth another try before any output."""

    stage = "provider"
    code = "provider_error"

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable


class DatabaseFailed(ParleyError):
    stage = "database"
    code = "database_error"


class ShuttingDown(ParleyError):
    stage = "internal"
    code = "server_shutting_down"
