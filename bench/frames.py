"""What the load generator sends and what the floor answers with: pure functions, no I/O.

The floor must answer a chat request with the events Parley sends for it, of the same sizes; it cuts the
answer with the ``demo`` model's own ``split_answer``. The harness also compares the bytes per turn of both
servers on every run, so a drift shows up in the report instead of passing unnoticed.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

FILLER = "Parley streams this answer in small pieces so the benchmark can count them. "
PROMPT = "Benchmark prompt: please answer."


def answer_text(chunks: int, delta_chars: int) -> str:
    """An answer of exactly ``chunks * delta_chars`` characters, so every delta has ``delta_chars``."""
    size = chunks * delta_chars
    return (FILLER * (size // len(FILLER) + 1))[:size]


def chat_request(
    request_id: str, chunks: int, delta_chars: int, delay_ms: float, session_id: str = ""
) -> dict[str, Any]:
    """A chat request for the ``demo`` model (docs/protocol.md section 2)."""
    options: dict[str, Any] = {"chunks": chunks, "text": answer_text(chunks, delta_chars)}
    if delay_ms:
        options["delay_ms"] = delay_ms
    return {
        "request_type": "text",
        "request_id": request_id,
        "user_input": {"prompt": PROMPT, "chat_history": [], "session_id": session_id},
        "user_settings": {"text": {"model": "demo", "options": options}},
    }


def new_request_id() -> str:
    """32 hex characters, as Parley makes them up; the floor relies on nothing about it."""
    return uuid.uuid4().hex


def encode(value: object) -> str:
    return orjson.dumps(value).decode()
