"""FastAPI's 422 (a body, query or path value that does not fit its schema) as ``invalid_request``.

FastAPI's own body lists pydantic's errors with each ``input`` echoed back: a lone surrogate in it cannot be
encoded (the 422 became a 500), and a 100,000-item list came back whole. Here the detail is one sentence per
problem naming the field as the client wrote it (``messages[3].content: …``), never the value.

A validator that refuses with one of Parley's codes raises ``PydanticCustomError(code, sentence)``; the
refusal then carries that code and its status (``OWN_CODES``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError

from parley.text import clean

OWN_CODES = {"invalid_import": 400}
SHOWN_PROBLEMS = 3  # more are counted, not listed
KEY_CHARS = 64  # a client's key longer than this is cut in the path
REASON_CHARS = 200
# Pydantic's wording where a plainer one exists; other types keep pydantic's message (which names limits
# and expected values, never the input).
_REASONS = {
    "missing": "is required",
    "extra_forbidden": "is not a field here",
    # pydantic refuses a lone surrogate before our validators see it; the text policy's words for it
    # (parley/text.py, ``storable``)
    "string_unicode": "must be valid Unicode text (it holds a lone surrogate)",
}
_WHERE = {"query": "query parameter ", "path": "path parameter ", "header": "header ", "cookie": "cookie "}


def refusal(exc: RequestValidationError) -> tuple[int, str, str]:
    """``(status, code, detail)`` of the answer to ``exc``."""
    problems = list(exc.errors())
    own = next((str(e["type"]) for e in problems if e.get("type") in OWN_CODES), None)
    if own is not None:
        return OWN_CODES[own], own, describe([e for e in problems if e.get("type") == own], exc.body)
    return 422, "invalid_request", describe(problems, exc.body)


def describe(problems: Sequence[dict[str, Any]], body: Any) -> str:
    """The problems as plain sentences: ``title: must not be blank`` (at most ``SHOWN_PROBLEMS`` of them)."""
    lines = [_problem(error, body).rstrip(".") for error in problems[:SHOWN_PROBLEMS]]
    hidden = len(problems) - len(lines)
    more = f" (and {hidden} more problem{'s' if hidden > 1 else ''})" if hidden > 0 else ""
    return "; ".join(lines) + more + "."


def _problem(error: dict[str, Any], body: Any) -> str:
    kind = str(error.get("type", ""))
    loc: Sequence[Any] = error.get("loc") or ()
    if kind == "json_invalid":
        reason = str((error.get("ctx") or {}).get("error") or "it cannot be parsed")
        return f"the body is not valid JSON ({_short(reason)})"
    source, rest = (str(loc[0]), loc[1:]) if loc else ("body", ())
    if source == "body":
        where = _body_path(rest, body, kind) or "the body"
    else:
        where = _WHERE.get(source, "") + "".join(_joined("", part) for part in rest)
    return f"{where}: {_reason(error, kind)}"


def _reason(error: dict[str, Any], kind: str) -> str:
    if kind in _REASONS:
        return _REASONS[kind]
    message = str(error.get("msg", "is not valid"))
    return _short(message.removeprefix("Value error, "))


def _body_path(loc: Sequence[Any], body: Any, kind: str) -> str:
    """``loc`` as the client's JSON has it (``messages[3].content``): the keys and indexes it holds.
    Pydantic's own steps (the member of a union it tried, ``[key]``) are left out, except a missing
    field's name at the end."""
    path = ""
    node = body
    for step, part in enumerate(loc):
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path, node = f"{path}[{part}]", node[part]
        elif isinstance(node, dict) and part in node:
            path, node = _joined(path, part), node[part]
        elif kind == "missing" and step == len(loc) - 1:
            path = _joined(path, part)
    return path


def _joined(path: str, key: Any) -> str:
    """``path.key``, or ``path["odd key"]`` for a key that is not a plain name; keys are cut and made
    sendable (NUL and lone surrogates replaced, controls escaped by the quoting)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = clean(str(key))[:KEY_CHARS]
    if text.isidentifier():
        return f"{path}.{text}" if path else text
    return f"{path}[{json.dumps(text, ensure_ascii=False)}]"


def _short(text: str) -> str:
    text = clean(" ".join(text.split()))
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"
