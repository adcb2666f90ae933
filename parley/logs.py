"""Logging: one format for Parley's records and uvicorn's, as text or as one JSON object a line.

A record's message is made safe for a log line whatever a client put in it: every string argument is cut
to ``MAX_ARG_CHARS`` and the whole message to ``MAX_MESSAGE_CHARS``, and in the text format the arguments'
control characters are escaped (JSON escapes everything), so a newline in a ``request_id`` cannot forge a
line and a 200 KB one makes no 200 KB line. The turn being run (``request_id``, ``session_id``) rides
along from context variables.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from parley.config import Settings

MAX_ARG_CHARS = 512
MAX_MESSAGE_CHARS = 4096
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRACE = 5  # uvicorn's "trace" level

REQUEST_ID: ContextVar[str | None] = ContextVar("parley_request_id", default=None)
SESSION_ID: ContextVar[str | None] = ContextVar("parley_session_id", default=None)
_CONTROL = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_LINE_BREAKS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}
_CONTROL |= _LINE_BREAKS


def clip(value: str, limit: int = MAX_ARG_CHARS) -> str:
    """``value`` cut to ``limit`` characters, saying how long it was."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…[{len(value)} chars]"


def escape(text: str) -> str:
    """Control characters (newlines among them) as visible escapes: one record, one line."""
    return text.translate(_CONTROL)


def safe_message(record: logging.LogRecord, escaped: bool = False) -> str:
    """The record's message with its string arguments (where what clients send arrives) clipped and, when
    ``escaped``, their control characters escaped; the whole clipped too. The format string is the code's
    own: a traceback logged as one (uvicorn does) keeps its lines."""

    def safe(value: object) -> object:
        if not isinstance(value, str):
            return value
        return escape(clip(value)) if escaped else clip(value)

    args = record.args
    if isinstance(args, tuple) and args:
        args = tuple(safe(a) for a in args)
    elif isinstance(args, dict):
        args = {k: safe(v) for k, v in args.items()}
    message = str(record.msg)
    if args:
        try:
            message = message % args
        except (TypeError, ValueError):
            message = f"{message} {args!r}"
    return clip(message, MAX_MESSAGE_CHARS)


def _context(record: logging.LogRecord) -> dict[str, str]:
    """``request_id`` and ``session_id``: given with ``extra=``, else those of the turn being run."""
    found: dict[str, str] = {}
    for name, variable in (("request_id", REQUEST_ID), ("session_id", SESSION_ID)):
        value = getattr(record, name, None) or variable.get()
        if value is not None:
            found[name] = clip(str(value), 200)
    return found


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> [request_id=… session_id=…]``, arguments' control characters
    escaped."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = safe_message(record, escaped=True)
        context = " ".join(f"{k}={escape(v)}" for k, v in _context(record).items())
        line = super().formatMessage(record)
        return f"{line} [{context}]" if context else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``msg``, ``request_id``/``session_id`` when
    known, ``exc`` with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": safe_message(record),
            **_context(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        # JSON may hold these unescaped, but a reader that splits lines as Python does would break there.
        return orjson.dumps(entry, default=str).decode().translate(_LINE_BREAKS)


def log_config(settings: Settings) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` for Parley and uvicorn alike (also uvicorn's ``log_config``)."""
    formatter = "json" if settings.log_format == "json" else "text"
    level = TRACE if settings.log_level == "trace" else settings.log_level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": formatter, "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"text": {"()": TextFormatter}, "json": {"()": JsonFormatter}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # uvicorn's own loggers hand their records to the root's one handler.
            **{
                name: {"handlers": [], "level": level, "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            # Alembic says "Context impl SQLiteImpl." at every start; `parley migrate` says what it applied.
            "alembic": {"level": level if settings.log_level in ("debug", "trace") else "WARNING"},
        },
    }


def configure(settings: Settings) -> dict[str, Any]:
    """Set up logging for this process; returns the config, for uvicorn to apply again as its own."""
    config = log_config(settings)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)  # Python's warnings too, as records in the one format
    return config


@contextlib.contextmanager
def turn_context(request_id: str) -> Iterator[None]:
    """Records logged while a turn runs carry its ``request_id`` (and ``session_id`` once it is known)."""
    request_token = REQUEST_ID.set(request_id)
    session_token = SESSION_ID.set(None)
    try:
        yield
    finally:
        SESSION_ID.reset(session_token)
        REQUEST_ID.reset(request_token)
