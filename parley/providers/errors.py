"""The one boundary where vendor SDK errors become Parley's ``ProviderFailed`` with a stable code.

Messages name the provider and what went wrong, with the vendor's or gateway's own message (cleaned and
cut short) when its error body has one; never the key, the request body or a traceback.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import unicodedata
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
# Only when the body names no status: a gateway that says "litellm.RateLimitError: …" and nothing else.
_RATE_MARKERS = ("ratelimiterror", "rate limit", "rate_limit", "too many requests")

DISPLAY_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic"}
MAX_VENDOR_MESSAGE = 300  # characters of the vendor's own message kept in ours

try:  # anthropic>=2 reads through httpx2, whose exceptions are not httpx's
    import httpx2

    _TIMEOUTS: tuple[type[BaseException], ...] = (httpx.TimeoutException, httpx2.TimeoutException)
    _TRANSPORT: tuple[type[BaseException], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:  # pragma: no cover
    _TIMEOUTS, _TRANSPORT = (httpx.TimeoutException,), (httpx.TransportError,)

# An error *event* inside a 200 stream carries the stream's own status; its body says what failed, in
# the words of whoever wrote it: Anthropic (overloaded_error), OpenAI (server_error, rate_limit_exceeded),
# LiteLLM (throttling_error), vLLM (BadRequestError), Google's gateways (RESOURCE_EXHAUSTED)… Words are
# compared lower-cased, without "_", "-", " " and a trailing "error": RateLimitError is rate_limit_error.
_STATUS_WORDS = {
    **dict.fromkeys(("invalidrequest", "badrequest", "invalidargument"), 400),
    **dict.fromkeys(("authentication", "unauthenticated", "unauthorized", "invalidapikey"), 401),
    **dict.fromkeys(("permission", "permissiondenied", "forbidden"), 403),
    **dict.fromkeys(("notfound",), 404),
    **dict.fromkeys(("requesttoolarge",), 413),
    **dict.fromkeys(
        (
            "ratelimit",
            "ratelimitexceeded",
            "ratelimited",
            "throttling",
            "throttled",
            "toomanyrequests",
            "resourceexhausted",
            "insufficientquota",
        ),
        429,
    ),
    **dict.fromkeys(("api", "server", "internal", "internalserver"), 500),
    **dict.fromkeys(("badgateway", "upstream"), 502),
    **dict.fromkeys(("serviceunavailable", "unavailable"), 503),
    **dict.fromkeys(("timeout", "gatewaytimeout", "deadlineexceeded"), 504),
    **dict.fromkeys(("overloaded",), 529),
}


def _error_body(exc: BaseException) -> dict[str, Any] | None:
    """The error object of the body: OpenAI's SDK keeps the inner dict, Anthropic's the outer one."""
    body: Any = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    return inner if isinstance(inner, dict) else None


def _as_status(value: object) -> int | None:
    """An HTTP error status given as a number or as digits (LiteLLM and Azure write ``"code": "429"``)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
        return value
    return None


def _word_status(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    word = re.sub(r"[\s_\-]", "", value.lower())
    return _STATUS_WORDS.get(word) or _STATUS_WORDS.get(word.removesuffix("error"))


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status, or for an error event inside a 200 stream, the status its body stands for."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status >= 400:
        return status
    inner = _error_body(exc)
    if inner is None:
        return None
    fields = [inner.get("code"), inner.get("status")]
    for value in fields:
        if (number := _as_status(value)) is not None:
            return number
    for value in [inner.get("type"), *fields]:
        if (number := _word_status(value)) is not None:
            return number
    return None


def _vendor_message(exc: BaseException) -> str | None:
    """The message of the error body, or an in-stream error that is only a string (``{"error": "…"}``).

    Not an HTTP error's raw text: that is often a proxy's HTML page.
    """
    if (inner := _error_body(exc)) is not None:
        message = inner.get("message")
        return message if isinstance(message, str) else None
    body: Any = getattr(exc, "body", None)
    return body if isinstance(body, str) and not hasattr(exc, "status_code") else None


def _detail_of(exc: BaseException) -> str:
    """The vendor's own error text (type, code and message from the body), lower-cased for matching."""
    parts = [str(getattr(exc, "message", "") or ""), _vendor_message(exc) or ""]
    if (inner := _error_body(exc)) is not None:
        parts += [str(inner.get(key, "")) for key in ("type", "code", "status")]
    return " ".join(parts).lower()


# Anything shaped like a credential: a word with a long random run (keys, tokens, signatures), a secret
# in a query string, the user and password of a URL, a bearer token. All linear in the text's length.
_WORD = re.compile(r"[^\s,;:()\[\]{}\"'<>]+")
_RUN = re.compile(r"[A-Za-z0-9]{20,}")  # random if letters and digits mix: not "ServiceUnavailableError"
_SECRET_PARAM = re.compile(r"(?i)([\w\-]*(?:key|token|secret|password|signature|sig|auth))=[^\s&]+")
_URL_USER = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://)[^\s/@]+@")
_BEARER = re.compile(r"(?i)\bbearer\s+\S+")
MAX_READ = 4000  # characters of a vendor message looked at; the rest could never be shown


def _random(word: str) -> bool:
    return any(not run.isalpha() and not run.isdigit() for run in _RUN.findall(word))


def _said(exc: BaseException, key: str | None) -> str:
    """The vendor's message from its error body, safe to show: one line, no credentials, cut short."""
    message = _vendor_message(exc)
    if message is None:
        return ""
    if len(message) > MAX_READ:  # cut at a space, so no piece of a credential is left at the cut
        message = message[:MAX_READ].rsplit(None, 1)[0]
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in message)
    if key and len(key) >= 4:
        text = text.replace(key, "[redacted]")
    text = _BEARER.sub("Bearer [redacted]", text)
    text = _URL_USER.sub(r"\1[redacted]@", text)
    text = _SECRET_PARAM.sub(r"\1=[redacted]", text)
    text = _WORD.sub(lambda m: "[redacted]" if _random(m[0]) else m[0], text)
    text = " ".join(text.split())
    if len(text) > MAX_VENDOR_MESSAGE:
        text = text[: MAX_VENDOR_MESSAGE - 1].rstrip() + "…"
    return text


def provider_label(provider: str) -> str:
    """How messages name a provider: a vendor by its name, an endpoint of the models file by its own."""
    return DISPLAY_NAMES.get(provider) or f"the model provider {provider!r}"


def _sentence(text: str, said: str = "", otherwise: str = ".") -> str:
    """A sentence that starts with a capital and ends with the vendor's words, if any."""
    text = text[:1].upper() + text[1:]
    return f"{text}: {said}" if said else f"{text}{otherwise}"


def classify(exc: BaseException, provider: str, key: str | None = None) -> ProviderFailed:
    """Map any SDK or transport exception to a ``ProviderFailed``; ``key`` is never shown."""
    if isinstance(exc, ProviderFailed):
        return exc
    who = provider_label(provider)
    status = _status_of(exc)
    detail = _detail_of(exc)
    said = _said(exc, key)
    kind = type(exc).__name__
    unnamed = status is None
    if status == 429 or kind == "RateLimitError" or (unnamed and any(m in detail for m in _RATE_MARKERS)):
        message = _sentence(f"{who} is rate limiting requests", said, "; try again shortly.")
        return ProviderFailed(message, code="rate_limited", retryable=True)
    if status in (401, 403) or kind in ("AuthenticationError", "PermissionDeniedError"):
        # Never the vendor's words here: a refused key is often quoted back in them.
        refused = f"{who} refused the API key (HTTP {status or 401})"
        return ProviderFailed(_sentence(refused, otherwise="; check the key configured for this provider."))
    if any(marker in detail for marker in _CONTEXT_MARKERS) or status == 413:
        message = _sentence(f"the conversation is too long for this model ({who})", said)
        return ProviderFailed(message, code="context_too_long")
    if "overloaded" in detail or (status or 0) >= 500:
        http = f" (HTTP {status})" if status else ""
        message = _sentence(f"{who} is unavailable or overloaded{http}", said)
        return ProviderFailed(message, retryable=True)
    where = _endpoint(exc)
    at = f" at {where}" if where else ""
    if "Timeout" in kind or isinstance(exc, (TimeoutError, asyncio.TimeoutError, *_TIMEOUTS)):
        return ProviderFailed(_sentence(f"{who}{at} did not answer in time"), retryable=True)
    if "Connection" in kind or isinstance(exc, (*_TRANSPORT, OSError)):
        return ProviderFailed(f"Could not reach {who}{at}: {_transport_cause(exc)}.", retryable=True)
    if status is not None:
        return ProviderFailed(_sentence(f"{who} rejected the request (HTTP {status})", said))
    if said:
        return ProviderFailed(_sentence(f"{who} reported an error", said))
    return ProviderFailed(_sentence(f"{who} failed ({kind})"))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first (the SDK's, httpx's, the socket's)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _endpoint(exc: BaseException) -> str | None:
    """``host:port`` of the request that failed, from the SDK's or httpx's exception (never the path)."""
    for link in _chain(exc):
        try:
            request = getattr(link, "request", None)  # httpx raises RuntimeError when it has none
        except RuntimeError:
            continue
        url = getattr(request, "url", None)
        host = getattr(url, "host", None)
        if isinstance(host, str) and host:
            port = getattr(url, "port", None) or (443 if getattr(url, "scheme", "") == "https" else 80)
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return None


def _transport_cause(exc: BaseException) -> str:
    """Why a connection failed, in an operator's words: refused, DNS, TLS, timeout, reset."""
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return f"TLS certificate not accepted ({link.verify_message or link.reason})"
        if isinstance(link, ssl.SSLError):
            return f"TLS handshake failed ({link.reason or 'SSL error'})"
        if isinstance(link, socket.gaierror):
            return "the host name does not resolve (DNS)"
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        if isinstance(link, ConnectionResetError):
            return "connection reset"
        if isinstance(link, (TimeoutError, *_TIMEOUTS)):
            return "timed out"
    return "connection failed"


@contextmanager
def provider_errors(provider: str, key: str | None = None) -> Iterator[None]:
    """Wrap a provider call: anything but cancellation and Parley's own errors becomes ``ProviderFailed``."""
    try:
        yield
    except ParleyError:
        raise
    except Exception as exc:
        raise classify(exc, provider, key) from exc
