"""The offline demo model: deterministic pieces, options checked, failure on demand."""

from __future__ import annotations

from typing import Any

import pytest

from parley.errors import ProviderFailed, ValidationFailed
from parley.providers.base import (
    ChatMessage,
    ProviderEvent,
    ProviderRequest,
    ReasoningDelta,
    TextDelta,
    Usage,
)
from parley.providers.demo import DemoProvider, split_answer


async def collect(options: dict[str, Any], prompt: str = "hi") -> list[ProviderEvent]:
    request = ProviderRequest("demo", [ChatMessage("user", prompt)], options=options)
    return [event async for event in DemoProvider().stream(request)]


def texts(events: list[ProviderEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


def test_split_by_words_keeps_every_character() -> None:
    assert split_answer("one two  three", None) == ["one ", "two ", " ", "three"]
    assert "".join(split_answer("a b c ", None)) == "a b c "


@pytest.mark.parametrize(("text", "chunks"), [("abcdef", 3), ("abcdefg", 3), ("ab", 5), ("x", 1)])
def test_split_into_exactly_n_pieces(text: str, chunks: int) -> None:
    pieces = split_answer(text, chunks)
    assert len(pieces) == chunks
    assert all(pieces)
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


async def test_stream_is_deterministic_and_reports_usage() -> None:
    first, second = await collect({}, "hello there"), await collect({}, "hello there")
    assert first == second
    assert "hello there" in "".join(texts(first))
    usages = [e for e in first if isinstance(e, Usage)]
    assert usages[0].input_tokens == 2
    assert usages[-1].output_tokens == len(texts(first))


async def test_text_chunks_and_reasoning_options() -> None:
    events = await collect({"text": "abcdef", "chunks": 3, "reasoning": "think first"})
    assert texts(events) == ["ab", "cd", "ef"]
    reasoning = [e.text for e in events if isinstance(e, ReasoningDelta)]
    assert "".join(reasoning) == "think first"
    first_text = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    assert all(not isinstance(e, ReasoningDelta) for e in events[first_text:])


async def test_fail_after_raises_a_provider_error_after_that_many_deltas() -> None:
    seen: list[str] = []

    async def consume() -> None:
        request = ProviderRequest("demo", [ChatMessage("user", "x")], options={"chunks": 10, "fail_after": 3})
        async for event in DemoProvider().stream(request):
            if isinstance(event, TextDelta):
                seen.append(event.text)

    with pytest.raises(ProviderFailed) as failure:
        await consume()
    assert len(seen) == 3
    assert failure.value.code == "provider_error"
    assert failure.value.stage == "provider"


@pytest.mark.parametrize(
    "options",
    [
        {"chunks": 0},
        {"chunks": "3"},
        {"chunks": 2.5},
        {"chunks": True},
        {"delay_ms": -1},
        {"delay_ms": 600_000},
        {"fail_after": -1},
        {"text": 5},
        {"text": ""},
        {"reasoning": ["x"]},
    ],
)
def test_bad_options_are_validation_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed) as failure:
        DemoProvider().check_options(options)
    assert failure.value.code == "invalid_request"
    assert next(iter(options)) in failure.value.message


def test_good_options_pass() -> None:
    DemoProvider().check_options({"chunks": 5, "delay_ms": 1.5, "text": "hi", "fail_after": 0, "other": [1]})
