"""Tool calls through the OpenAI adapter and the real SDK, against the fake Chat Completions server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from parley.errors import ProviderFailed
from parley.providers.base import (
    ChatMessage,
    ProviderEvent,
    ProviderRequest,
    StepEnd,
    TextDelta,
    ToolCallReady,
    ToolCallStarted,
    Usage,
    stream_with_retries,
)
from parley.providers.openai import OpenAIProvider
from parley.tools.base import ToolCall, ToolResult
from tests.providers.fake_openai import FakeOpenAI, Reply
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

KEY = "sk-test-" + "k" * 40
MODEL = "gpt-test-1"

# Two calls whose JSON is split mid-key, mid-escape and mid-number, as real streams split it.
CALC = FakeToolCall("call_calc", "calculator", ('{"expr', 'ession": "(1 + ', "2) * 3", '"}'))
CLOCK = FakeToolCall(
    "call_clock", "current_time", ('{"time', 'zone": "Europe/Par', 'is", "note": "caf\\u00', 'e9 \\"x\\""}')
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    adapter = OpenAIProvider(api_key=KEY, base_url=fake.base_url, timeout_s=10)
    yield adapter
    await adapter.aclose()


def ask(*messages: ChatMessage, **kwargs: Any) -> ProviderRequest:
    return ProviderRequest(MODEL, list(messages) or [ChatMessage("user", "Hi")], tools=TOOLS, **kwargs)


# --- streaming calls ---------------------------------------------------------------------------------


@pytest.mark.parametrize("interleave", [False, True])
async def test_parallel_calls_are_reassembled_exactly(
    fake: FakeOpenAI, provider: OpenAIProvider, interleave: bool
) -> None:
    fake.script(
        text_chunks=["Let me ", "check."], tool_calls=[CALC, CLOCK], interleave=interleave, usage=(20, 9)
    )
    events = await collect(provider, ask())
    assert kinds(events) == [
        "TextDelta",
        "TextDelta",
        "ToolCallStarted",
        "ToolCallStarted",
        "ToolCallReady",
        "ToolCallReady",
        "StepEnd",
    ]
    assert started(events) == [
        ToolCallStarted("call_calc", "calculator"),
        ToolCallStarted("call_clock", "current_time"),
    ]
    calc = ToolCall("call_calc", "calculator", {"expression": "(1 + 2) * 3"})
    clock = ToolCall("call_clock", "current_time", {"timezone": "Europe/Paris", "note": 'café "x"'})
    assert [e.call for e in ready(events)] == [calc, clock]
    assert events[-2] == Usage(20, 9)  # usage comes after finish_reason; StepEnd closes the stream
    end = step_end(events)
    assert (end.reason, end.raw) == ("tool_use", "tool_calls")
    assert end.message == ChatMessage("assistant", "Let me check.", tool_calls=(calc, clock))
    assert end.tool_calls == (calc, clock)


async def test_a_call_starts_before_its_arguments_arrive(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """ToolCallStarted comes with the call's first piece, so the client can show progress at once."""
    many = FakeToolCall("call_slow", "calculator", tuple('{"expression": "1+1"}'))
    fake.script(text_chunks=[], tool_calls=[many], delay_s=0.02)
    stream = provider.stream(ask())
    async with asyncio.timeout(10):
        event = await anext(stream)
        while isinstance(event, Usage):
            event = await anext(stream)
        assert event == ToolCallStarted("call_slow", "calculator")
        rest = [e async for e in stream]
    assert ready(rest)[0].call.arguments == {"expression": "1+1"}


async def test_a_text_answer_with_tools_offered_ends_the_step(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.script(text_chunks=["Just ", "text."])
    events = await collect(provider, ask())
    assert kinds(events) == ["TextDelta", "TextDelta", "StepEnd"]
    end = step_end(events)
    assert (end.reason, end.raw, end.tool_calls) == ("end", "stop", ())
    assert end.message == ChatMessage("assistant", "Just text.")


async def test_calls_with_finish_reason_stop_are_still_tool_use(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """Some compatible servers (older Ollama among them) end a tool-call answer with "stop"."""
    fake.script(text_chunks=[], tool_calls=[CALC], finish_reason="stop")
    end = step_end(await collect(provider, ask()))
    assert (end.reason, end.raw) == ("tool_use", "stop")
    assert [c.name for c in end.tool_calls] == ["calculator"]


async def test_a_server_that_sends_no_call_id_gets_one(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.script(text_chunks=[], tool_calls=[FakeToolCall("", "calculator", ('{"expression": "1"}',))])
    events = await collect(provider, ask())
    (start,) = started(events)
    (event,) = ready(events)
    assert start.call_id.startswith("call_")
    assert event.call == ToolCall(start.call_id, "calculator", {"expression": "1"})


async def test_invalid_json_arguments_pass_through_raw(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    broken = FakeToolCall("call_bad", "calculator", ('{"expression": "2+', "2"))
    fake.script(text_chunks=[], tool_calls=[broken])
    events = await collect(provider, ask())
    (event,) = ready(events)
    assert event.call == ToolCall("call_bad", "calculator", '{"expression": "2+2')
    result = await REGISTRY.run(event.call, CONTEXT)
    assert (result.is_error, result.code) == (True, "invalid_arguments")


async def test_a_call_without_arguments_has_empty_ones(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.script(text_chunks=[], tool_calls=[FakeToolCall("call_now", "current_time")])
    (event,) = ready(await collect(provider, ask()))
    assert event.call.arguments == {}


async def test_length_cut_mid_call(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.script(
        text_chunks=[],
        tool_calls=[FakeToolCall("call_cut", "calculator", ('{"expre',))],
        finish_reason="length",
    )
    end = step_end(await collect(provider, ask()))
    assert (end.reason, end.raw) == ("max_tokens", "length")
    assert end.tool_calls == (ToolCall("call_cut", "calculator", '{"expre'),)  # the loop gets an error result


async def test_no_tools_offered_means_no_tool_events(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.script(text_chunks=["Hi"], tool_calls=[CALC])  # a server that calls tools it was never offered
    events = await collect(provider, ProviderRequest(MODEL, [ChatMessage("user", "Hi")]))
    assert events == [TextDelta("Hi"), Usage(10, 5)]
    assert "tools" not in fake.requests[0]


# --- the request ---------------------------------------------------------------------------------------


async def test_tools_are_sent_as_function_tools(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    await collect(provider, ask())
    body = fake.requests[0]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters},
        }
        for spec in TOOLS
    ]
    assert "tool_choice" not in body  # the API's default, "auto"


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", "auto"),
        ("required", "required"),
        ("none", "none"),
        ("calculator", {"type": "function", "function": {"name": "calculator"}}),
    ],
)
async def test_tool_choice(fake: FakeOpenAI, provider: OpenAIProvider, choice: str, sent: object) -> None:
    await collect(provider, ask(tool_choice=choice))
    assert fake.requests[0]["tool_choice"] == sent


async def test_tool_choice_without_tools_is_not_sent(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    await collect(provider, ProviderRequest(MODEL, [ChatMessage("user", "Hi")], tool_choice="required"))
    assert not {"tools", "tool_choice"} & fake.requests[0].keys()


async def test_history_with_calls_and_results(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    calls = (
        ToolCall("call_1", "calculator", {"expression": "2+2"}),
        ToolCall("call_2", "current_time", '{"timezone": '),  # the model's broken JSON, sent back as it was
        ToolCall("call_3", "current_time", {}),
    )
    messages = [
        ChatMessage("system", "Use tools."),
        ChatMessage("user", "Sum and time?"),
        ChatMessage("assistant", "", tool_calls=calls),
        ChatMessage.tool_result(ToolResult("call_1", "4")),
        ChatMessage.tool_result(ToolResult("call_2", "Invalid arguments: not JSON", is_error=True)),
        ChatMessage.tool_result(ToolResult("call_3", "")),
        ChatMessage(
            "assistant",
            "Checking once more.",
            tool_calls=(ToolCall("call_4", "calculator", {"expression": "1"}),),
        ),
        ChatMessage.tool_result(ToolResult("call_4", "1")),
    ]
    await collect(provider, ask(*messages))
    assert fake.requests[0]["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Sum and time?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "current_time", "arguments": '{"timezone": '},
                },
                {"id": "call_3", "type": "function", "function": {"name": "current_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: Invalid arguments: not JSON"},
        {"role": "tool", "tool_call_id": "call_3", "content": "(no output)"},
        {
            "role": "assistant",
            "content": "Checking once more.",
            "tool_calls": [
                {
                    "id": "call_4",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "1"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_4", "content": "1"},
    ]


async def test_a_loop_sends_back_what_the_stream_gave(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.script(text_chunks=["Let me check."], tool_calls=[CALC, CLOCK])
    fake.script(text_chunks=["It is 9."])
    run = await run_tool_loop(provider, ask(ChatMessage("user", "Compute")))
    assert [step_end(step).reason for step in run.steps] == ["tool_use", "end"]
    assert text_of(run.steps[-1]) == "It is 9."
    second = fake.requests[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "tool", "tool"]
    assert second[1]["content"] == "Let me check."
    assert [json.loads(c["function"]["arguments"]) for c in second[1]["tool_calls"]] == [
        {"expression": "(1 + 2) * 3"},
        {"timezone": "Europe/Paris", "note": 'café "x"'},
    ]
    assert second[2] == {"role": "tool", "tool_call_id": "call_calc", "content": "9"}
    assert second[3] == {  # the schema forbids "note": an error result, flagged in its text
        "role": "tool",
        "tool_call_id": "call_clock",
        "content": "Error: Invalid arguments for tool 'current_time': "
        "Additional properties are not allowed ('note' was unexpected)",
    }


# --- cancel and retries -------------------------------------------------------------------------------------


async def test_closing_the_stream_mid_call_closes_upstream(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    slow = FakeToolCall("call_slow", "calculator", tuple(f'"{i}"' for i in range(200)))
    fake.script(text_chunks=[], tool_calls=[slow], delay_s=0.05)
    stream = provider.stream(ask())
    async with asyncio.timeout(10):
        async for event in stream:
            if isinstance(event, ToolCallStarted):
                break
        await stream.aclose()
    await asyncio.wait_for(fake.client_disconnected.wait(), 2)


async def test_no_retry_once_a_call_has_started(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.reply(Reply(text_chunks=(), tool_calls=(CALC,), cut_after=2, abrupt=True))
    fake.script(tool_calls=[CALC])
    events: list[ProviderEvent] = []
    with pytest.raises(ProviderFailed) as failure:
        await drain(stream_with_retries(provider, ask(), attempts=3, backoff_s=0.01), events)
    assert failure.value.retryable
    assert started(events) == [ToolCallStarted("call_calc", "calculator")]
    assert not any(isinstance(e, (ToolCallReady, StepEnd)) for e in events)  # a cut call is never ready
    assert len(fake.requests) == 1
