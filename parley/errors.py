"""Parley's own errors: a stage and a stable code for the client, a clear sentence, the rest for logs."""

from __future__ import annotations

from typing import Literal

Stage = Literal["validation", "auth", "provider", "database", "limits", "internal"]


class ParleyError(Exception):
    """An error a client may see. ``message`` never holds stack traces, SQL or secrets."""

    stage: Stage = "internal"
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, stage: Stage | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if stage is not None:
            self.stage = stage


class ValidationFailed(ParleyError):
    stage = "validation"
    code = "invalid_request"


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
