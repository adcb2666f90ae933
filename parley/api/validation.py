"""FastAPI's 422 (a body, query or path value that does not fit its schema) as ``invalid_request``.

FastAPI's own body lists pydantic's errors with each ``input`` echoed back: a lone surrogate in it cannot be
encoded (the 422 became a 500), and a 100,000-item list came back whole. Here the detail is one sentence per
problem naming the field as the client wrote it (``messages[3].content: …``), never the value, in the
WebSocket's words (parley/validation.py).

A validator that refuses with one of Parley's codes raises ``PydanticCustomError(code, sentence)``; the
refusal then carries that code and its status (``OWN_CODES``, statuses from parley/errors.py's ``CODES``).
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError

from parley.errors import http_status
from parley.validation import UNSEEN, describe

OWN_CODES = ("invalid_import",)
_WHERE = {"query": "query parameter ", "path": "path parameter ", "header": "header ", "cookie": "cookie "}


def refusal(exc: RequestValidationError) -> tuple[int, str, str]:
    """``(status, code, detail)`` of the answer to ``exc``."""
    problems = list(exc.errors())
    own = next((str(e["type"]) for e in problems if e.get("type") in OWN_CODES), None)
    if own is not None:
        problems = [e for e in problems if e.get("type") == own]
    code = own or "invalid_request"
    sources = {"body": ("", exc.body)} | {source: (label, UNSEEN) for source, label in _WHERE.items()}
    return http_status(code), code, describe(problems, sources=sources)
