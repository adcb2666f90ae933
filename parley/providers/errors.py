"""The one boundary where vendor SDK errors become Parley's ``ProviderFailed`` with a stable code.

Messages name the provider and what went wrong, never the key, the request body or a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from parley.errors import ParleyError, ProviderFailed

# Phrases vendors use when the conversation does not fit the model's context window.
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "exceeds the model",
)


DISPLAY_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic"}

try:  # anthropic>=2 reads through httpx2, whose exceptions are not httpx's
    import httpx2

    _TIMEOUTS: tuple[type[BaseException], ...] = (httpx.TimeoutException, httpx2.TimeoutException)
    _TRANSPORT: tuple[type[BaseException], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:  # pragma: no cover
    _TIMEOUTS, _TRANSPORT = (httpx.TimeoutException,), (httpx.TransportError,)

# An error *event* inside a 200 stream carries the stream's own status; its error.type says what failed.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
    "server_error": 500,  # OpenAI's in-stream error types
    "rate_limit_exceeded": 429,
}


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status, or for an error event inside a 200 stream, the status its error type stands for."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status >= 400:
        return status
    body: Any = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None  # OpenAI's body is the inner dict
    if not isinstance(inner, dict):
        return None
    code = inner.get("code")
    if isinstance(code, int) and 400 <= code <= 599:  # OpenRouter puts the status in `code`
        return code
    return _ERROR_TYPE_STATUS.get(str(inner.get("type"))) or _ERROR_TYPE_STATUS.get(str(code))


def _detail_of(exc: BaseException) -> str:
    """The vendor's own error text (type and message from the body), lower-cased for matching."""
    body: Any = getattr(exc, "body", None)
    parts = [str(getattr(exc, "message", "") or "")]
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            parts += [str(inner.get("type", "")), str(inner.get("code", "")), str(inner.get("message", ""))]
    return " ".join(parts).lower()


def classify(exc: BaseException, provider: str) -> ProviderFailed:
    """Map any SDK or transport exception to a ``ProviderFailed``."""
    if isinstance(exc, ProviderFailed):
        return exc
    name = DISPLAY_NAMES.get(provider, provider)
    status = _status_of(exc)
    detail = _detail_of(exc)
    kind = type(exc).__name__
    if status == 429 or kind == "RateLimitError":
        return ProviderFailed(
            f"{name} rate-limited the request; try again shortly.", code="rate_limited", retryable=True
        )
    if status in (401, 403) or kind in ("AuthenticationError", "PermissionDeniedError"):
        return ProviderFailed(
            f"{name} refused the API key (HTTP {status or 401}); check the key configured for this provider."
        )
    if any(marker in detail for marker in _CONTEXT_MARKERS) or status == 413:
        return ProviderFailed(
            f"The conversation is too long for this model ({name}).", code="context_too_long"
        )
    if "overloaded" in detail or status in (500, 502, 503, 504, 529):
        return ProviderFailed(
            f"{name} is unavailable or overloaded (HTTP {status or 'error'}).", retryable=True
        )
    if "Timeout" in kind or isinstance(exc, (TimeoutError, asyncio.TimeoutError, *_TIMEOUTS)):
        return ProviderFailed(f"{name} did not answer in time.", retryable=True)
    if "Connection" in kind or isinstance(exc, (*_TRANSPORT, OSError)):
        return ProviderFailed(f"Could not reach {name}.", retryable=True)
    if status is not None:
        return ProviderFailed(f"{name} rejected the request (HTTP {status}).")
    return ProviderFailed(f"{name} failed ({kind}).")


@contextmanager
def provider_errors(provider: str) -> Iterator[None]:
    """Wrap a provider call: anything but cancellation and Parley's own errors becomes ``ProviderFailed``."""
    try:
        yield
    except ParleyError:
        raise
    except Exception as exc:
        raise classify(exc, provider) from exc
