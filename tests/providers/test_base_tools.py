"""The provider vocabulary for tools: messages that carry a tool exchange, argument decoding, retries."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from parley.errors import ProviderFailed
from parley.providers.base import (
    ChatMessage,
    Provider,
    ProviderEvent,
    ProviderRequest,
    StepEnd,
    ToolCallReady,
    ToolCallStarted,
    Usage,
    arguments_json,
    decode_arguments,
    stop_reason,
    stream_with_retries,
)
from parley.tools.base import ToolCall, ToolResult


def test_chat_message_keeps_its_positional_form() -> None:
    message = ChatMessage("user", "hi")
    assert (message.role, message.content, message.tool_calls, message.tool_call_id, message.is_error) == (
        "user",
        "hi",
        (),
        None,
        False,
    )
    assert message == ChatMessage("user", "hi")


def test_tool_result_message() -> None:
    message = ChatMessage.tool_result(ToolResult("call_1", "boom", is_error=True, code="tool_failed"))
    assert message == ChatMessage("tool", "boom", tool_call_id="call_1", is_error=True)


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ('{"a": 1}', {"a": 1}),
        ('  {"a": [1, {"b": null}]} ', {"a": [1, {"b": None}]}),
        ("", {}),
        ("   ", {}),
        ('{"a": ', '{"a": '),
        ("[1]", "[1]"),
        ('"text"', '"text"'),
        ("null", "null"),
    ],
)
def test_decode_arguments(text: str, decoded: object) -> None:
    assert decode_arguments(text) == decoded


def test_arguments_json() -> None:
    assert arguments_json(ToolCall("c", "t", {"x": "é"})) == '{"x": "\\u00e9"}'
    assert (
        arguments_json(ToolCall("c", "t", '{"x": ')) == '{"x": '
    )  # raw text goes back as the model wrote it


def test_stop_reason_with_calls_is_tool_use() -> None:
    call = ToolCall("c", "t")
    assert stop_reason("end", [call]) == "tool_use"
    assert stop_reason("end", []) == "end"
    assert stop_reason("max_tokens", [call]) == "max_tokens"
    assert stop_reason("other", [call]) == "other"


def test_step_end_exposes_its_calls() -> None:
    call = ToolCall("c", "t")
    assert StepEnd("tool_use", ChatMessage("assistant", "", tool_calls=(call,))).tool_calls == (call,)


class FlakyToolProvider(Provider):
    """Starts a call, then fails with a retryable error; counts its attempts."""

    def __init__(self, events: list[ProviderEvent]) -> None:
        self.events = events
        self.attempts = 0

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        self.attempts += 1
        for event in self.events:
            yield event
        raise ProviderFailed("flaky", retryable=True)


@pytest.mark.parametrize(
    "output",
    [ToolCallStarted("c", "t"), ToolCallReady(ToolCall("c", "t"))],
)
async def test_no_retry_after_a_tool_call_was_shown(output: ProviderEvent) -> None:
    provider = FlakyToolProvider([Usage(1), output])
    seen: list[ProviderEvent] = []

    async def consume() -> None:
        async for event in stream_with_retries(provider, ProviderRequest("m", []), attempts=3, backoff_s=0):
            seen.append(event)

    with pytest.raises(ProviderFailed):
        await consume()
    assert provider.attempts == 1
    assert seen == [Usage(1), output]


async def test_usage_alone_is_still_retried() -> None:
    provider = FlakyToolProvider([Usage(1)])
    with pytest.raises(ProviderFailed):
        async for _ in stream_with_retries(provider, ProviderRequest("m", []), attempts=3, backoff_s=0):
            pass
    assert provider.attempts == 3
