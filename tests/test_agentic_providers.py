"""Agentic turns against the fake OpenAI and Anthropic servers: the real SDKs, tool-call arguments streamed
in each vendor's wire format, and what each vendor is sent — within a turn and in the next turn's context."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from parley.tools import FunctionTool, ToolContext, ToolSpec
from tests.conftest import LiveServer
from tests.invariants import TurnSummary
from tests.providers.fake_anthropic import SIGNATURE, FakeAnthropic
from tests.providers.fake_anthropic import Reply as AnthropicReply
from tests.providers.fake_openai import FakeOpenAI
from tests.providers.fake_vendor import FakeToolCall
from tests.wsclient import ChatClient

TOOLS = ["calculator", "current_time"]
CALC = FakeToolCall("call_calc", "calculator", ('{"expr', 'ession": ', '"6 * 7"}'))
CLOCK = FakeToolCall("call_clock", "current_time", ('{"timezone"', ': "UTC"}'))


async def turn(client: ChatClient, prompt: str, model: str, **kwargs: Any) -> TurnSummary:
    return await client.turn(await client.chat(prompt, model=model, **kwargs))


def results_by_name(summary: TurnSummary) -> dict[str, dict[str, Any]]:
    names = {u["call_id"]: u["name"] for u in summary.tool_uses}
    return {names[r["call_id"]]: r for r in summary.tool_results}


async def stored_answer(server: LiveServer, summary: TurnSummary) -> Any:
    rows = await server.store.session_messages(uuid.UUID(summary.session_id or ""))
    return next(m for m in rows if str(m.id) == summary.ai_message_id)


# --------------------------------------------------------------------------------------------------
# OpenAI


async def test_openai_tool_turn_and_the_next_turns_context(
    gpt_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(text_chunks=["Let me ", "compute."], tool_calls=[CALC, CLOCK], interleave=True)
    fake_openai.script(text_chunks=["It is ", "42."])
    async with await gpt_server.client() as client:
        first = await turn(client, "What is 6*7?", "gpt-4o-mini", tools=TOOLS)
        fake_openai.script(text_chunks=["Still 42."])
        second = await turn(client, "Sure?", "gpt-4o-mini", tools=TOOLS, session_id=first.session_id or "")
        fake_openai.script(text_chunks=["Yes."])
        third = await turn(client, "Plain now", "gpt-4o-mini", session_id=first.session_id or "")

    assert first.status == "completed", first.error
    assert [(u["call_id"], u["name"], u["input"]) for u in first.tool_uses] == [
        ("call_calc", "calculator", {"expression": "6 * 7"}),
        ("call_clock", "current_time", {"timezone": "UTC"}),
    ]
    results = results_by_name(first)
    assert results["calculator"]["output"] == "42" and not results["current_time"]["is_error"]
    assert first.text == "Let me compute.It is 42."
    assert first.usage == {"input_tokens": 20, "output_tokens": 10}  # both steps' tokens
    kinds = first.kinds
    assert kinds.index("toolResult") < max(i for i, k in enumerate(kinds) if k == "text")  # text after tools

    # Step 1 offered the tools; step 2 was sent the assistant's calls and one tool message per result.
    step1, step2 = fake_openai.requests[0], fake_openai.requests[1]
    assert [t["function"]["name"] for t in step1["tools"]] == TOOLS
    assert step2["messages"][-3] == {
        "role": "assistant",
        "content": "Let me compute.",
        "tool_calls": [
            {
                "id": "call_calc",
                "type": "function",
                "function": {"name": "calculator", "arguments": '{"expression": "6 * 7"}'},
            },
            {
                "id": "call_clock",
                "type": "function",
                "function": {"name": "current_time", "arguments": '{"timezone": "UTC"}'},
            },
        ],
    }
    assert step2["messages"][-2] == {"role": "tool", "tool_call_id": "call_calc", "content": "42"}
    assert step2["messages"][-1]["role"] == "tool" and step2["messages"][-1]["tool_call_id"] == "call_clock"

    # The next turn with tools replays the whole exchange in OpenAI's shape.
    assert second.status == "completed"
    history = fake_openai.requests[2]["messages"]
    assert history[0] == {"role": "user", "content": "What is 6*7?"}
    assert history[1] == step2["messages"][-3]
    assert history[2:4] == step2["messages"][-2:]
    assert history[4:] == [
        {"role": "assistant", "content": "It is 42."},
        {"role": "user", "content": "Sure?"},
    ]
    # Without tools, the earlier exchange is told as text: no tool_calls, no tool messages, no tools.
    assert third.status == "completed"
    plain = fake_openai.requests[3]
    assert "tools" not in plain
    assert all(m["role"] in ("user", "assistant") and "tool_calls" not in m for m in plain["messages"])
    told = plain["messages"][1]["content"]
    assert told.startswith(
        'Let me compute.\n[Called tool calculator with {"expression": "6 * 7"}]\n[Tool result: 42]'
    )
    assert told.endswith("It is 42.")

    row = await stored_answer(gpt_server, first)
    assert row.content == first.text and row.tool_steps[0]["text"] == "Let me compute."


# --------------------------------------------------------------------------------------------------
# Anthropic


async def test_anthropic_tool_turn_and_the_next_turns_context(
    claude_server: LiveServer, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(text_chunks=["Let me ", "check."], tool_calls=[CALC, CLOCK], usage=(20, 9))
    fake_anthropic.script(text_chunks=["It is ", "42."], usage=(40, 3))
    async with await claude_server.client() as client:
        first = await turn(client, "What is 6*7?", "claude-mini", tools=TOOLS)
        fake_anthropic.script(text_chunks=["Still 42."])
        second = await turn(client, "Sure?", "claude-mini", tools=TOOLS, session_id=first.session_id or "")
        fake_anthropic.script(text_chunks=["Yes."])
        third = await turn(client, "Plain now", "claude-mini", session_id=first.session_id or "")

    assert first.status == "completed", first.error
    assert [(u["call_id"], u["input"]) for u in first.tool_uses] == [
        ("call_calc", {"expression": "6 * 7"}),
        ("call_clock", {"timezone": "UTC"}),
    ]
    assert results_by_name(first)["calculator"]["output"] == "42"
    assert first.text == "Let me check.It is 42."
    assert first.usage == {"input_tokens": 60, "output_tokens": 12}

    step1, step2 = fake_anthropic.requests[0], fake_anthropic.requests[1]
    assert [t["name"] for t in step1["tools"]] == TOOLS
    assert step1["tools"][0]["input_schema"]["required"] == ["expression"]
    assistant = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "call_calc", "name": "calculator", "input": {"expression": "6 * 7"}},
            {"type": "tool_use", "id": "call_clock", "name": "current_time", "input": {"timezone": "UTC"}},
        ],
    }
    assert step2["messages"][1] == assistant
    results = step2["messages"][2]
    assert results["role"] == "user" and [b["type"] for b in results["content"]] == ["tool_result"] * 2
    assert results["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "call_calc",
        "is_error": False,
        "content": "42",
    }

    # The next turn with tools: the same blocks, then the final text, then the new question.
    assert second.status == "completed"
    history = fake_anthropic.requests[2]["messages"]
    assert history[:3] == step2["messages"][:3]
    assert history[3:] == [
        {"role": "assistant", "content": "It is 42."},
        {"role": "user", "content": "Sure?"},
    ]
    # Without tools no tool_use or tool_result block may be sent (the API would refuse them): text instead.
    assert third.status == "completed"
    plain = fake_anthropic.requests[3]
    assert "tools" not in plain
    assert all(isinstance(m["content"], str) for m in plain["messages"])
    assert '[Called tool current_time with {"timezone": "UTC"}]' in plain["messages"][1]["content"]


async def test_anthropic_failure_mid_step_closes_the_calls_it_announced(
    claude_server: LiveServer, fake_anthropic: FakeAnthropic
) -> None:
    """The first call is whole (announced), the second never is: the stream fails in its arguments."""
    fake_anthropic.reply(AnthropicReply(text_chunks=(), tool_calls=(CALC, CLOCK), error_after=4))
    async with await claude_server.client() as client:
        summary = await turn(client, "Fail", "claude-mini", tools=TOOLS)
        fake_anthropic.script(text_chunks=["Recovered."])
        after = await turn(client, "After", "claude-mini", tools=TOOLS, session_id=summary.session_id or "")

    assert summary.status == "error" and summary.error is not None
    assert (summary.error["stage"], summary.error["code"]) == ("provider", "provider_error")
    assert [u["call_id"] for u in summary.tool_uses] == ["call_calc"]
    (result,) = summary.tool_results
    assert result["is_error"] and result["output"].startswith("Not run")
    row = await stored_answer(claude_server, summary)
    assert (row.status, row.tool_steps[0]["results"][0]["is_error"]) == ("error", True)
    # The failed turn's call and its result travel in the next turn's context, as a valid pair.
    assert after.status == "completed"
    history = fake_anthropic.requests[-1]["messages"]
    assert history[1]["content"][0]["type"] == "tool_use"
    assert history[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "call_calc",
        "is_error": True,
        "content": result["output"],
    }


async def test_anthropic_model_that_never_stops_calling_hits_the_step_limit(
    claude_server: LiveServer, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(text_chunks=["Again."], tool_calls=[CALC])  # the last reply answers every request
    async with await claude_server.client() as client:
        summary = await turn(client, "Loop", "claude-mini", tools=["calculator"], max_steps=2)
    assert summary.error is not None and summary.error["code"] == "tool_step_limit"
    assert len(fake_anthropic.requests) == 2
    assert [r["output"] for r in summary.tool_results] == [
        "42",
        "Not run: the turn reached its limit of 2 model steps.",
    ]
    row = await stored_answer(claude_server, summary)
    assert row.content == "Again.Again." and len(row.tool_steps) == 2
    assert json.dumps(row.tool_steps).count('"is_error": true') == 1


async def test_openai_bad_arguments_and_a_slow_tool_cancelled_mid_run(
    gpt_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def slow(arguments: Mapping[str, Any], context: ToolContext) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "late"

    spec = ToolSpec("slow", "Takes its time.", {"type": "object"})
    gpt_server.runtime.services.tools.register(FunctionTool(spec, slow))
    broken = FakeToolCall("call_bad", "calculator", ('{"expression": ', "6 *"))
    fake_openai.script(text_chunks=["Trying."], tool_calls=[broken])
    fake_openai.script(text_chunks=["Now slowly."], tool_calls=[FakeToolCall("call_slow", "slow", ("{}",))])
    async with await gpt_server.client() as client:
        rid = await client.chat("Go", model="gpt-4o-mini", tools=["calculator", "slow"])
        async with asyncio.timeout(15):
            while not started.is_set():
                await client.pump()
        sent = time.monotonic()
        await client.send({"type": "cancel", "request_id": rid})
        await client.wait_for(rid, "cancelled")
        latency = time.monotonic() - sent
        summary = await client.turn(rid)

    assert summary.status == "cancelled" and latency < 0.5, latency
    assert cancelled == [True]
    bad, slow_result = summary.tool_results
    assert summary.tool_uses[0]["input"] == '{"expression": 6 *'  # the model's raw text, shown as sent
    assert bad["is_error"] and "not JSON" in bad["output"]
    assert slow_result["is_error"] and slow_result["output"].startswith("Cancelled")
    # The model was shown its mistake on the next step, in OpenAI's shape (no error flag: a prefix).
    assert fake_openai.requests[1]["messages"][-1]["content"].startswith("Error: Invalid arguments")
    row = await stored_answer(gpt_server, summary)
    assert (row.status, row.content) == ("cancelled", "Trying.Now slowly.")
    assert [len(step["results"]) for step in row.tool_steps] == [1, 1]


async def test_anthropic_thinking_goes_back_signed_within_the_turn(
    claude_server: LiveServer, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(text_chunks=[], thinking_chunks=["Need ", "a sum."], tool_calls=[CALC])
    fake_anthropic.script(text_chunks=["42."])
    async with await claude_server.client() as client:
        summary = await turn(
            client, "Sum?", "claude-mini", tools=["calculator"], options={"thinking_budget": 2048}
        )
    assert summary.status == "completed"
    assert summary.kinds[:4] == ["working", "reasoning", "reasoning", "toolUse"]
    step2 = fake_anthropic.requests[1]["messages"][1]
    assert step2["content"][0] == {"type": "thinking", "thinking": "Need a sum.", "signature": SIGNATURE}
    assert step2["content"][1]["type"] == "tool_use"
    row = await stored_answer(claude_server, summary)
    assert row.reasoning == "Need a sum." and row.content == "42."
