"""Tool use through the Anthropic adapter and the real SDK, against the fake Messages API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from parley.errors import ProviderFailed
from parley.providers.anthropic import AnthropicProvider
from parley.providers.base import (
    ChatMessage,
    ProviderEvent,
    ProviderRequest,
    StepEnd,
    TextDelta,
    ThinkingBlock,
    ToolCallReady,
    ToolCallStarted,
    Usage,
    stream_with_retries,
)
from parley.tools.base import ToolCall, ToolResult
from tests.providers.fake_anthropic import SIGNATURE, FakeAnthropic, Reply
from tests.providers.fake_vendor import FakeToolCall
from tests.providers.tool_helpers import (
    CONTEXT,
    REGISTRY,
    TOOLS,
    collect,
    drain,
    kinds,
    ready,
    run_tool_loop,
    started,
    step_end,
    text_of,
)

KEY = "sk-ant-test-" + "k" * 32
MODEL = "claude-test-1"

CALC = FakeToolCall("toolu_calc", "calculator", ('{"expr', 'ession": "(1 + ', "2) * 3", '"}'))
CLOCK = FakeToolCall("toolu_clock", "current_time", ('{"time', 'zone": "Europe/Par', 'is"}'))


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    adapter = AnthropicProvider(api_key=KEY, base_url=fake.base_url, timeout_s=10)
    yield adapter
    await adapter.aclose()


def ask(*messages: ChatMessage, **kwargs: Any) -> ProviderRequest:
    return ProviderRequest(MODEL, list(messages) or [ChatMessage("user", "Hi")], tools=TOOLS, **kwargs)


# --- streaming calls ---------------------------------------------------------------------------------


async def test_calls_are_reassembled_exactly_in_order(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.script(text_chunks=["Let me ", "check."], tool_calls=[CALC, CLOCK], usage=(20, 9))
    events = await collect(provider, ask())
    assert kinds(events) == [  # blocks stream one after another: each call is ready before the next starts
        "TextDelta",
        "TextDelta",
        "ToolCallStarted",
        "ToolCallReady",
        "ToolCallStarted",
        "ToolCallReady",
        "StepEnd",
    ]
    assert started(events) == [
        ToolCallStarted("toolu_calc", "calculator"),
        ToolCallStarted("toolu_clock", "current_time"),
    ]
    calc = ToolCall("toolu_calc", "calculator", {"expression": "(1 + 2) * 3"})
    clock = ToolCall("toolu_clock", "current_time", {"timezone": "Europe/Paris"})
    assert [e.call for e in ready(events)] == [calc, clock]
    assert events[0] == Usage(input_tokens=20, output_tokens=1)
    assert events[-2] == Usage(input_tokens=20, output_tokens=9)  # message_delta: cumulative
    end = step_end(events)
    assert (end.reason, end.raw) == ("tool_use", "tool_use")
    assert end.message == ChatMessage("assistant", "Let me check.", tool_calls=(calc, clock))


async def test_a_call_with_no_text_first(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.script(text_chunks=[], tool_calls=[CALC])
    events = await collect(provider, ask())
    assert kinds(events) == ["ToolCallStarted", "ToolCallReady", "StepEnd"]
    assert step_end(events).message.content == ""


async def test_a_text_answer_with_tools_offered_ends_the_step(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.script(text_chunks=["Just ", "text."])
    end = step_end(await collect(provider, ask()))
    assert (end.reason, end.raw, end.tool_calls) == ("end", "end_turn", ())
    assert end.message == ChatMessage("assistant", "Just text.")


async def test_invalid_json_input_passes_through_raw(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.script(
        text_chunks=[], tool_calls=[FakeToolCall("toolu_bad", "calculator", ('{"expression": ', "2"))]
    )
    (event,) = ready(await collect(provider, ask()))
    assert event.call == ToolCall("toolu_bad", "calculator", '{"expression": 2')
    result = await REGISTRY.run(event.call, CONTEXT)
    assert (result.is_error, result.code) == (True, "invalid_arguments")


async def test_a_call_without_input_has_empty_arguments(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.script(text_chunks=[], tool_calls=[FakeToolCall("toolu_now", "current_time")])
    (event,) = ready(await collect(provider, ask()))
    assert event.call.arguments == {}


async def test_max_tokens_mid_call(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.script(
        text_chunks=[],
        tool_calls=[FakeToolCall("toolu_cut", "calculator", ('{"expre',))],
        stop_reason="max_tokens",
    )
    end = step_end(await collect(provider, ask()))
    assert (end.reason, end.raw) == ("max_tokens", "max_tokens")
    assert end.tool_calls == (ToolCall("toolu_cut", "calculator", '{"expre'),)


async def test_thinking_is_kept_signed_for_the_next_step(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.script(
        thinking_chunks=["Need ", "a sum."],
        redacted_thinking="ZW5jcnlwdGVk",
        text_chunks=[],
        tool_calls=[CALC],
    )
    events = await collect(provider, ask(options={"thinking_budget": 2048}))
    assert kinds(events) == [
        "ReasoningDelta",
        "ReasoningDelta",
        "ToolCallStarted",
        "ToolCallReady",
        "StepEnd",
    ]
    end = step_end(events)
    assert end.message.thinking == (
        ThinkingBlock("Need a sum.", SIGNATURE),
        ThinkingBlock(redacted="ZW5jcnlwdGVk"),
    )

    fake.script(text_chunks=["9."])
    await collect(
        provider,
        ask(
            ChatMessage("user", "Hi"),
            end.message,
            ChatMessage.tool_result(ToolResult("toolu_calc", "9")),
            options={"thinking_budget": 2048},
        ),
    )
    assistant = fake.requests[1]["messages"][1]
    assert assistant == {
        "role": "assistant",
        "content": [  # the thinking first, unchanged, as the API requires with thinking on
            {"type": "thinking", "thinking": "Need a sum.", "signature": SIGNATURE},
            {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"},
            {
                "type": "tool_use",
                "id": "toolu_calc",
                "name": "calculator",
                "input": {"expression": "(1 + 2) * 3"},
            },
        ],
    }


async def test_no_tools_offered_means_no_tool_events(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.script(text_chunks=["Hi"], tool_calls=[CALC])  # a server that calls tools it was never offered
    events = await collect(provider, ProviderRequest(MODEL, [ChatMessage("user", "Hi")]))
    assert [e for e in events if not isinstance(e, Usage)] == [TextDelta("Hi")]
    assert not {"tools", "tool_choice"} & fake.requests[0].keys()


# --- the request ---------------------------------------------------------------------------------------


async def test_tools_are_sent_with_input_schema(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    await collect(provider, ask())
    body = fake.requests[0]
    assert body["tools"] == [
        {"name": spec.name, "description": spec.description, "input_schema": spec.parameters}
        for spec in TOOLS
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ("calculator", {"type": "tool", "name": "calculator"}),
    ],
)
async def test_tool_choice(
    fake: FakeAnthropic, provider: AnthropicProvider, choice: str, sent: object
) -> None:
    await collect(provider, ask(tool_choice=choice))
    assert fake.requests[0]["tool_choice"] == sent


async def test_history_with_calls_and_results(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    calls = (
        ToolCall("toolu_1", "calculator", {"expression": "2+2"}),
        ToolCall("toolu_2", "current_time", '{"timezone": '),  # broken JSON: the API takes only objects
        ToolCall("toolu_3", "current_time", '{"timezone": "UTC"}'),
    )
    messages = [
        ChatMessage("system", "Use tools."),
        ChatMessage("user", "Sum and time?"),
        ChatMessage("assistant", "Let me check.", tool_calls=calls),
        ChatMessage.tool_result(ToolResult("toolu_1", "4")),
        ChatMessage.tool_result(ToolResult("toolu_2", "Invalid arguments: not JSON", is_error=True)),
        ChatMessage.tool_result(ToolResult("toolu_3", "")),
        ChatMessage("assistant", "", tool_calls=(ToolCall("toolu_4", "calculator", {"expression": "1"}),)),
        ChatMessage.tool_result(ToolResult("toolu_4", "1")),
        ChatMessage("assistant", "Done: 4."),
        ChatMessage("user", "Thanks"),
    ]
    await collect(provider, ask(*messages))
    body = fake.requests[0]
    assert body["system"] == "Use tools."
    assert body["messages"] == [
        {"role": "user", "content": "Sum and time?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "calculator", "input": {"expression": "2+2"}},
                {"type": "tool_use", "id": "toolu_2", "name": "current_time", "input": {}},
                {"type": "tool_use", "id": "toolu_3", "name": "current_time", "input": {"timezone": "UTC"}},
            ],
        },
        {
            "role": "user",
            "content": [  # one step's results: one user turn
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False, "content": "4"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "is_error": True,
                    "content": "Invalid arguments: not JSON",
                },
                {"type": "tool_result", "tool_use_id": "toolu_3", "is_error": False},  # empty: no content
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_4", "name": "calculator", "input": {"expression": "1"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_4", "is_error": False, "content": "1"}],
        },
        {"role": "assistant", "content": "Done: 4."},
        {"role": "user", "content": "Thanks"},
    ]


async def test_results_and_user_text_share_one_turn_results_first(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    """Roles must alternate, and a user turn's tool results must come before its text."""
    call = ToolCall("toolu_1", "calculator", {"expression": "2+2"})
    messages = [
        ChatMessage("user", "Sum?"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage.tool_result(ToolResult("toolu_1", "4")),
        ChatMessage("user", "Also, hurry."),
        ChatMessage("user", ""),  # empty: dropped
    ]
    await collect(provider, ask(*messages))
    assert fake.requests[0]["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False, "content": "4"},
            {"type": "text", "text": "Also, hurry."},
        ],
    }
    assert len(fake.requests[0]["messages"]) == 3


async def test_adjacent_assistant_text_and_calls_merge(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    call = ToolCall("toolu_1", "calculator", {"expression": "2+2"})
    messages = [
        ChatMessage("user", "Sum?"),
        ChatMessage("assistant", "First thought."),
        ChatMessage("assistant", "Then a call.", tool_calls=(call,)),
        ChatMessage.tool_result(ToolResult("toolu_1", "4")),
    ]
    await collect(provider, ask(*messages))
    assert fake.requests[0]["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "First thought.\n\nThen a call."},
            {"type": "tool_use", "id": "toolu_1", "name": "calculator", "input": {"expression": "2+2"}},
        ],
    }


async def test_a_loop_sends_back_what_the_stream_gave(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.script(text_chunks=["Let me check."], tool_calls=[CALC, CLOCK])
    fake.script(text_chunks=["It is 9."])
    run = await run_tool_loop(provider, ask(ChatMessage("user", "Compute")))
    assert [step_end(step).reason for step in run.steps] == ["tool_use", "end"]
    assert text_of(run.steps[-1]) == "It is 9."
    second = fake.requests[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"][1:] == [
        {
            "type": "tool_use",
            "id": "toolu_calc",
            "name": "calculator",
            "input": {"expression": "(1 + 2) * 3"},
        },
        {
            "type": "tool_use",
            "id": "toolu_clock",
            "name": "current_time",
            "input": {"timezone": "Europe/Paris"},
        },
    ]
    results = second[2]["content"]
    assert [(r["tool_use_id"], r["is_error"]) for r in results] == [
        ("toolu_calc", False),
        ("toolu_clock", False),
    ]
    assert results[0]["content"] == "9"
    assert '"timezone": "Europe/Paris"' in results[1]["content"]


# --- cancel and retries -------------------------------------------------------------------------------------


async def test_closing_the_stream_mid_call_closes_upstream(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    slow = FakeToolCall("toolu_slow", "calculator", tuple(f'"{i}"' for i in range(200)))
    fake.script(text_chunks=[], tool_calls=[slow], delay_s=0.05)
    stream = provider.stream(ask())
    async with asyncio.timeout(10):
        async for event in stream:
            if isinstance(event, ToolCallStarted):
                break
        await stream.aclose()
    await asyncio.wait_for(fake.client_disconnected.wait(), 2)


async def test_no_retry_once_a_call_has_started(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.reply(Reply(text_chunks=(), tool_calls=(CALC,), error_after=1))
    fake.script(tool_calls=[CALC])
    events: list[ProviderEvent] = []
    with pytest.raises(ProviderFailed) as failure:
        await drain(stream_with_retries(provider, ask(), attempts=3, backoff_s=0.01), events)
    assert failure.value.retryable  # overloaded: retryable in itself, not retried after a call started
    assert started(events) == [ToolCallStarted("toolu_calc", "calculator")]
    assert not any(isinstance(e, (ToolCallReady, StepEnd)) for e in events)
    assert len(fake.requests) == 1
