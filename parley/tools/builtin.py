"""Built-in tools that need no network: ``current_time``, ``calculator`` and ``search_sessions``."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from parley.tools.base import FunctionTool, SearchHitLike, Tool, ToolContext, ToolError, ToolSpec
from parley.tools.calculator import MAX_EXPRESSION_CHARS, evaluate, format_number

Clock = Callable[[], datetime]

MAX_QUERY_CHARS = 500
MAX_SEARCH_RESULTS = 20
DEFAULT_SEARCH_RESULTS = 5

CURRENT_TIME = ToolSpec(
    name="current_time",
    description=(
        "The current date and time. Give an IANA time zone name (such as 'Europe/Paris' or "
        "'America/New_York') for local time; the default is UTC."
    ),
    parameters={
        "type": "object",
        "properties": {
            "timezone": {"type": "string", "maxLength": 64, "description": "IANA time zone name"},
        },
        "additionalProperties": False,
    },
)

CALCULATOR = ToolSpec(
    name="calculator",
    description=(
        "Evaluate an arithmetic expression with Python syntax and precedence: "
        "numbers, + - * / // % ** (power), parentheses; functions abs, round, floor, ceil, min, max, sqrt, "
        "cbrt, exp, log(x[, base]), log2, log10, sin, cos, tan, asin, acos, atan, atan2, sinh, cosh, tanh, "
        "hypot, degrees, radians, factorial; constants pi, e, tau. Angles are in radians. Integers are "
        "exact (up to 4096 bits); '/' and the math functions give floating-point results."
    ),
    parameters={
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_EXPRESSION_CHARS,
                "description": "for example: (2 + 3) * sqrt(16) / 7",
            },
        },
        "required": ["expression"],
        "additionalProperties": False,
    },
)

SEARCH_SESSIONS = ToolSpec(
    name="search_sessions",
    description=(
        "Search the user's earlier chat sessions by words (every word must match, as a word prefix, "
        "ignoring case). Returns the best matching messages with their session and a snippet."
    ),
    parameters={
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS},
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_SEARCH_RESULTS,
                "description": f"how many messages to return (default {DEFAULT_SEARCH_RESULTS})",
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)


def builtin_tools(clock: Clock | None = None) -> list[Tool]:
    """The built-in tools, ready to register; ``clock`` replaces the real one in tests."""
    return [current_time_tool(clock), calculator_tool(), search_sessions_tool()]


def current_time_tool(clock: Clock | None = None) -> Tool:
    now = clock or (lambda: datetime.now(UTC))

    async def current_time(arguments: Mapping[str, Any], context: ToolContext) -> str:
        name = arguments.get("timezone") or "UTC"
        local = now().astimezone(_zone(name))
        return json.dumps(
            {
                "timezone": name,
                "datetime": local.isoformat(timespec="seconds"),
                "weekday": local.strftime("%A"),
                "utc_offset": local.strftime("%z"),
                "unix": int(local.timestamp()),
            }
        )

    return FunctionTool(CURRENT_TIME, current_time)


def _zone(name: str) -> tzinfo:
    if name.upper() in ("UTC", "Z"):
        return UTC  # no tz database needed for the default
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolError(
            f"Unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' or 'America/New_York'.",
            code="unknown_timezone",
        ) from None


def calculator_tool() -> Tool:
    async def calculator(arguments: Mapping[str, Any], context: ToolContext) -> str:
        return format_number(evaluate(arguments["expression"]))

    return FunctionTool(CALCULATOR, calculator)


def search_sessions_tool() -> Tool:
    async def search_sessions(arguments: Mapping[str, Any], context: ToolContext) -> str:
        limit = arguments.get("limit", DEFAULT_SEARCH_RESULTS)
        # The customer is the token's, from the context: never an argument the model could set.
        hits = await context.search(context.customer_id, arguments["query"], limit, 0)
        return format_hits(arguments["query"], hits)

    return FunctionTool(SEARCH_SESSIONS, search_sessions)


def format_hits(query: str, hits: Sequence[SearchHitLike]) -> str:
    """Compact JSON the model can read: snippets as plain text (the store marks matches up as HTML)."""
    results = [
        {
            "session_id": str(hit.session_id),
            "session_title": hit.session_title,
            "message_id": str(hit.message_id),
            "role": hit.role,
            "created_at": hit.created_at.isoformat(timespec="seconds"),
            "snippet": plain_snippet(hit.snippet),
        }
        for hit in hits
    ]
    return json.dumps({"query": query, "results": results}, ensure_ascii=False)


def plain_snippet(snippet: str) -> str:
    return html.unescape(snippet.replace("<mark>", "").replace("</mark>", ""))
