"""The built-in offline model: a deterministic answer streamed in pieces, with knobs for testing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from parley.errors import ProviderFailed, ValidationFailed
from parley.providers.base import Provider, ProviderEvent, ProviderRequest, ReasoningDelta, TextDelta, Usage

MAX_CHUNKS = 1_000_000
MAX_DELAY_MS = 60_000

# option name -> (whole numbers only, minimum, maximum)
_NUMBERS: dict[str, tuple[bool, float, float]] = {
    "chunks": (True, 1, MAX_CHUNKS),
    "delay_ms": (False, 0, MAX_DELAY_MS),
    "fail_after": (True, 0, MAX_CHUNKS),
}


def default_answer(prompt: str) -> str:
    quoted = " ".join(prompt.split())[:200]
    return (
        f'Hello! This is Parley\'s offline demo model. You said: "{quoted}". '
        "I stream this answer in small pieces so you can watch it arrive."
    )


def split_answer(text: str, chunks: int | None) -> list[str]:
    """Word-sized deltas by default; else exactly ``chunks`` near-equal ones (short text is repeated)."""
    if chunks is None:
        words = text.split(" ")
        return [w + " " for w in words[:-1]] + ([words[-1]] if words[-1] else [])
    while len(text) < chunks:
        text = f"{text} {text}"
    size, extra = divmod(len(text), chunks)
    pieces, start = [], 0
    for i in range(chunks):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def approx_tokens(text: str) -> int:
    return max(1, len(text.split()))


class DemoProvider(Provider):
    """Options: ``chunks``, ``delay_ms``, ``text``, ``reasoning``, ``fail_after`` (see docs/protocol.md)."""

    name = "demo"
    needs_key = False

    def check_options(self, options: Mapping[str, Any]) -> None:
        for key, (whole, low, high) in _NUMBERS.items():
            value = options.get(key)
            if value is None:
                continue
            number = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
            if not number or not low <= value <= high:
                raise ValidationFailed(f"options.{key} must be a number from {low:g} to {high:g}.")
        for key in ("text", "reasoning"):
            if key in options and not isinstance(options[key], str):
                raise ValidationFailed(f"options.{key} must be a string.")
        if options.get("text") == "":
            raise ValidationFailed("options.text must not be empty.")

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        options = request.options
        prompt = request.messages[-1].content if request.messages else ""
        pieces = split_answer(options.get("text") or default_answer(prompt), options.get("chunks"))
        delay = float(options.get("delay_ms") or 0) / 1000
        fail_after: int | None = options.get("fail_after")
        yield Usage(input_tokens=sum(approx_tokens(m.content) for m in request.messages))
        if reasoning := options.get("reasoning"):
            for piece in split_answer(reasoning, None):
                await asyncio.sleep(delay)
                yield ReasoningDelta(piece)
        for sent, piece in enumerate(pieces):
            if fail_after is not None and sent >= fail_after:
                raise ProviderFailed(f"The demo model failed after {sent} deltas, as asked (fail_after).")
            await asyncio.sleep(delay)
            yield TextDelta(piece)
        yield Usage(output_tokens=len(pieces))
