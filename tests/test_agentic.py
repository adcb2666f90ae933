"""Agentic turns end to end with the demo model: a real server, a real WebSocket client, scripted tool calls.

Every turn goes through ``check_turn``, which also checks the tool events (each ``toolUse`` answered by
exactly one ``toolResult`` before the turn's closing events). Storage is read back from the database and
over REST. Tests about storage run on SQLite and PostgreSQL (``server``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from parley.store.tables import Message
from parley.tools import FunctionTool, ToolContext, ToolError, ToolSpec
from tests.conftest import LiveServer
from tests.invariants import TurnSummary
from tests.wsclient import ChatClient

TURN_TIMEOUT_S = 15.0
CANCEL_BOUND_S = 0.5  # "within milliseconds": generous enough for a loaded test machine

Call = dict[str, Any]


def call(name: str, **arguments: Any) -> Call:
    return {"name": name, "arguments": arguments}


def fresh_customer() -> str:
    return f"agent-{uuid.uuid4().hex[:16]}"


def add_tool(server: LiveServer, name: str, run: Any, parameters: Mapping[str, Any] | None = None) -> None:
    """Register a test tool on the running server's registry (what the app built from built-ins and MCP)."""
    spec = ToolSpec(name, f"The {name} test tool.", parameters or {"type": "object"})
    server.runtime.services.tools.register(FunctionTool(spec, run))


async def agentic(
    client: ChatClient, prompt: str = "Use the tools", *, tools: Sequence[str], **kwargs: Any
) -> TurnSummary:
    return await client.turn(await client.chat(prompt, tools=list(tools), **kwargs), TURN_TIMEOUT_S)


async def answer_row(server: LiveServer, summary: TurnSummary) -> Message:
    assert summary.session_id is not None
    rows = await server.store.session_messages(uuid.UUID(summary.session_id))
    return next(m for m in rows if str(m.id) == summary.ai_message_id)


def text_runs(summary: TurnSummary) -> list[str]:
    """The turn's body as runs: consecutive text events merged into one "text" entry."""
    runs: list[str] = []
    for kind in summary.kinds:
        if kind == "text" and runs and runs[-1] == "text":
            continue
        runs.append(kind)
    return runs


# --------------------------------------------------------------------------------------------------
# The loop


async def test_multi_step_turn_streams_every_step_and_stores_the_exchange(server: LiveServer) -> None:
    options = {
        "tool_steps": [
            [call("calculator", expression="6 * 7")],
            [call("current_time", timezone="UTC"), call("calculator", expression="2 ** 10")],
        ],
        "tool_text": "Let me check. ",
    }
    async with await server.client() as client:
        summary = await agentic(client, "What is 6*7?", tools=["calculator", "current_time"], options=options)

    assert summary.status == "completed"
    # One working first; each step's text, then its calls, then their results; the final text; then the end.
    assert text_runs(summary) == [
        "working",
        "text",
        "toolUse",
        "toolResult",
        "text",
        "toolUse",
        "toolUse",
        "toolResult",
        "toolResult",
        "text",
        "dbOperationExecuted",
        "fullProcessComplete",
    ]
    uses = summary.tool_uses
    assert [(u["name"], u["input"]) for u in uses] == [
        ("calculator", {"expression": "6 * 7"}),
        ("current_time", {"timezone": "UTC"}),
        ("calculator", {"expression": "2 ** 10"}),
    ]
    results = {r["call_id"]: r for r in summary.tool_results}
    assert results[uses[0]["call_id"]] == {"call_id": uses[0]["call_id"], "output": "42", "is_error": False}
    assert results[uses[2]["call_id"]]["output"] == "1024"
    assert json.loads(results[uses[1]["call_id"]]["output"])["timezone"] == "UTC"
    assert summary.text.startswith("Let me check. Let me check. Tool results: calculator: 42; current_time: ")
    assert summary.usage is not None and summary.usage["output_tokens"] > 0

    row = await answer_row(server, summary)
    assert (row.status, row.content) == ("completed", summary.text)  # every text delta, in order
    assert row.usage == summary.usage
    assert row.tool_steps is not None and len(row.tool_steps) == 2
    first, second = row.tool_steps
    assert first == {
        "text": "Let me check. ",
        "calls": [{"id": uses[0]["call_id"], "name": "calculator", "input": {"expression": "6 * 7"}}],
        "results": [{"call_id": uses[0]["call_id"], "output": "42", "is_error": False}],
    }
    assert [c["id"] for c in second["calls"]] == [uses[1]["call_id"], uses[2]["call_id"]]
    assert [r["call_id"] for r in second["results"]] == [uses[1]["call_id"], uses[2]["call_id"]]

    async with server.http() as http:
        body = (await http.get(f"/api/v1/sessions/{summary.session_id}")).json()
    question, answer = body["messages"]
    assert question["tool_steps"] is None
    assert answer["tool_steps"] == row.tool_steps
    assert answer["content"] == summary.text


async def test_a_turn_with_tools_that_calls_none_is_a_plain_turn(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        summary = await agentic(client, tools=["calculator"], options={"text": "No tools needed."})
    assert summary.status == "completed" and summary.text == "No tools needed."
    assert "toolUse" not in summary.kinds
    row = await answer_row(sqlite_server, summary)
    assert row.tool_steps is None


async def test_snake_dialect_names_the_tool_events(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client(dialect="snake") as client:
        summary = await agentic(
            client, tools=["calculator"], options={"tool_calls": [call("calculator", expression="1+1")]}
        )
    assert summary.status == "completed"
    types = [e["type"] for e in summary.events]
    assert types.index("tool_start") < types.index("tool_result") < types.index("db_operation_executed")
    assert summary.tool_results[0]["output"] == "2"


async def test_independent_calls_run_concurrently(sqlite_server: LiveServer) -> None:
    """Each call waits until its sibling has started: run one after the other, both would time out."""
    arrived: list[str] = []
    both = asyncio.Event()

    async def meet(arguments: Mapping[str, Any], context: ToolContext) -> str:
        arrived.append(str(arguments["who"]))
        if len(arrived) == 2:
            both.set()
        try:
            await asyncio.wait_for(both.wait(), 3)
        except TimeoutError:
            raise ToolError("nobody came") from None
        return f"{arguments['who']} met the other"

    add_tool(sqlite_server, "meet", meet, {"type": "object", "properties": {"who": {"type": "string"}}})
    options = {"tool_calls": [call("meet", who="a"), call("meet", who="b")]}
    async with await sqlite_server.client() as client:
        started = time.monotonic()
        summary = await agentic(client, tools=["meet"], options=options)
        elapsed = time.monotonic() - started
    assert summary.status == "completed"
    assert sorted(r["output"] for r in summary.tool_results) == ["a met the other", "b met the other"]
    assert not any(r["is_error"] for r in summary.tool_results)
    assert elapsed < 3


async def test_failing_tools_become_error_results_the_model_sees(sqlite_server: LiveServer) -> None:
    async def explode(arguments: Mapping[str, Any], context: ToolContext) -> str:
        raise RuntimeError("secret internals /etc/passwd")

    add_tool(sqlite_server, "explode", explode)
    options = {
        "tool_calls": [
            call("calculator", expression="1/0"),  # the tool's own error, meant for the model
            call("explode"),  # an unexpected exception: only its type is shown
            call("calculator", expr="1"),  # arguments that do not fit the schema
            {"name": "calculator", "arguments": "{not json"},  # arguments that are not JSON at all
            call("current_time"),  # a real tool, but not one this request selected
            call("no_such_tool"),
        ]
    }
    async with await sqlite_server.client() as client:
        summary = await agentic(client, tools=["calculator", "explode"], options=options)
        after = await agentic(
            client, tools=["calculator"], options={"tool_calls": [call("calculator", expression="3+4")]}
        )

    assert summary.status == "completed"
    outputs = [(r["is_error"], r["output"]) for r in summary.tool_results]
    by_call = {r["call_id"]: r for r in summary.tool_results}
    ordered = [by_call[u["call_id"]] for u in summary.tool_uses]
    assert all(r["is_error"] for r in ordered), outputs
    assert ordered[0]["output"] == "Division by zero."
    assert ordered[1]["output"] == "Tool 'explode' failed unexpectedly (RuntimeError)."
    assert "secret" not in ordered[1]["output"]
    assert ordered[2]["output"].startswith("Invalid arguments for tool 'calculator'")
    assert summary.tool_uses[3]["input"] == "{not json"  # shown as the model wrote it
    assert "not JSON" in ordered[3]["output"]
    assert ordered[4]["output"] == "Tool 'current_time' is not enabled for this request."
    assert ordered[5]["output"] == "Tool 'no_such_tool' does not exist."
    assert "calculator (error): Division by zero." in summary.text  # the model was shown the failures
    assert after.status == "completed" and after.tool_results[0]["output"] == "7"  # the connection goes on

    row = await answer_row(sqlite_server, summary)
    stored = row.tool_steps[0] if row.tool_steps else {}
    assert stored["calls"][3]["input"] == "{not json"
    assert [r["is_error"] for r in stored["results"]] == [True] * 6


async def test_tool_output_is_capped_and_timed_out(tmp_path: Any) -> None:
    from tests.conftest import live_server, make_settings

    async def huge(arguments: Mapping[str, Any], context: ToolContext) -> str:
        return "x" * 10_000

    async def stuck(arguments: Mapping[str, Any], context: ToolContext) -> str:
        await asyncio.sleep(30)
        return "never"

    settings = make_settings(tmp_path, tool_timeout_s=0.2, tool_max_output_chars=500)
    async with live_server(settings) as live:
        add_tool(live, "huge", huge)
        add_tool(live, "stuck", stuck)
        async with await live.client() as client:
            summary = await agentic(
                client, tools=["huge", "stuck"], options={"tool_calls": [call("huge"), call("stuck")]}
            )
    assert summary.status == "completed"
    big, late = (
        next(r for r in summary.tool_results if r["call_id"] == u["call_id"]) for u in summary.tool_uses
    )
    assert len(big["output"]) == 500 and "[output truncated" in big["output"] and not big["is_error"]
    assert late == {
        "call_id": late["call_id"],
        "output": "Tool 'stuck' timed out after 0.2 s.",
        "is_error": True,
    }


# --------------------------------------------------------------------------------------------------
# Cancel, limits, refusals


async def test_cancel_inside_a_slow_tool_stops_at_once(server: LiveServer) -> None:
    started = asyncio.Event()
    outcome: list[str] = []

    async def slow(arguments: Mapping[str, Any], context: ToolContext) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("finished")
        return "done"

    add_tool(server, "slow", slow)
    options = {
        "tool_steps": [
            [call("calculator", expression="1+2")],
            [call("slow"), call("calculator", expression="5-1")],
        ],
        "tool_text": "Working on it. ",
    }
    async with await server.client() as client:
        rid = await client.chat("Take your time", tools=["slow", "calculator"], options=options)
        async with asyncio.timeout(TURN_TIMEOUT_S):
            while not started.is_set():
                await client.pump()
        sent = time.monotonic()
        await client.send({"type": "cancel", "request_id": rid})
        cancelled = await client.wait_for(rid, "cancelled")
        latency = time.monotonic() - sent
        summary = await client.turn(rid)

    assert cancelled and summary.status == "cancelled"
    assert latency < CANCEL_BOUND_S, f"the cancel took {latency:.3f} s"
    assert outcome == ["cancelled"]  # the tool itself was cancelled, not left running
    slow_use = next(u for u in summary.tool_uses if u["name"] == "slow")
    slow_result = next(r for r in summary.tool_results if r["call_id"] == slow_use["call_id"])
    assert slow_result["is_error"] and slow_result["output"].startswith("Cancelled")
    assert summary.kinds[-3:] == ["cancelled", "dbOperationExecuted", "fullProcessComplete"]

    row = await answer_row(server, summary)
    assert (row.status, row.content) == ("cancelled", summary.text)  # exactly what was sent
    assert summary.text == "Working on it. Working on it. "
    assert row.tool_steps is not None and len(row.tool_steps) == 2
    first, second = row.tool_steps
    assert first["results"][0]["output"] == "3"
    assert len(second["calls"]) == len(second["results"]) == 2  # every stored call has a result
    assert all(r["is_error"] for r in second["results"] if r["call_id"] == slow_use["call_id"])


async def test_cancel_while_the_model_streams_a_later_step(sqlite_server: LiveServer) -> None:
    options = {"tool_calls": [call("calculator", expression="2+2")], "text": "word " * 200, "delay_ms": 20}
    async with await sqlite_server.client() as client:
        rid = await client.chat("go", tools=["calculator"], options=options)
        await client.wait_for(rid, "toolResult")
        await client.wait_for(rid, "text")
        await client.send({"type": "cancel", "request_id": rid})
        summary = await client.turn(rid)
    assert summary.status == "cancelled"
    row = await answer_row(sqlite_server, summary)
    assert row.content == summary.text and row.status == "cancelled"
    assert row.tool_steps is not None and row.tool_steps[0]["results"][0]["output"] == "4"


async def test_step_limit_ends_with_its_own_error(server: LiveServer) -> None:
    options = {
        "tool_calls": [call("calculator", expression="1+1")],
        "repeat_tool_calls": True,
        "tool_text": "Again. ",
    }
    async with await server.client() as client:
        summary = await agentic(client, tools=["calculator"], options=options, max_steps=3)
        after = await client.turn(await client.chat("plain", options={"text": "fine", "chunks": 1}))

    assert summary.status == "error"
    assert summary.error is not None
    assert (summary.error["stage"], summary.error["code"]) == ("limits", "tool_step_limit")
    assert "3 steps" in summary.error["content"]
    assert len(summary.tool_uses) == 3
    outputs = [r["output"] for r in summary.tool_results]
    assert outputs[:2] == ["2", "2"]
    assert outputs[2] == "Not run: the turn reached its limit of 3 model steps."
    assert summary.tool_results[2]["is_error"]
    assert summary.text == "Again. Again. Again. "
    assert after.status == "completed"

    row = await answer_row(server, summary)
    assert (row.status, row.error_code, row.content) == ("error", "tool_step_limit", summary.text)
    assert row.tool_steps is not None and len(row.tool_steps) == 3
    assert row.tool_steps[2]["results"][0]["is_error"] is True


async def test_the_server_limit_caps_the_requested_steps(tmp_path: Any) -> None:
    from tests.conftest import live_server, make_settings

    options = {"tool_calls": [call("calculator", expression="1+1")], "repeat_tool_calls": True}
    async with live_server(make_settings(tmp_path, max_tool_steps=2)) as live, await live.client() as client:
        summary = await agentic(client, tools=["calculator"], options=options, max_steps=50)
    assert summary.error is not None and summary.error["code"] == "tool_step_limit"
    assert len(summary.tool_uses) == 2


@pytest.mark.parametrize(
    ("tools", "extra", "code"),
    [
        (["calculator", "teleport"], {}, "unknown_tool"),
        (["calculator"], {"max_steps": 0}, "invalid_request"),
        ("calculator", {}, "invalid_request"),  # a list of names, not a string
        ([1], {}, "invalid_request"),
    ],
)
async def test_bad_tool_selections_are_refused_before_anything_is_stored(
    server: LiveServer, tools: Any, extra: dict[str, Any], code: str
) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        rid = await client.chat("hi", tools=tools, **extra)
        summary = await client.turn(rid)
    assert summary.kinds == ["working", "error", "fullProcessComplete"]
    assert summary.error is not None and (summary.error["stage"], summary.error["code"]) == (
        "validation",
        code,
    )
    if code == "unknown_tool":
        assert "'teleport'" in summary.error["content"] and "calculator" in summary.error["content"]
    async with server.http(customer) as http:
        assert (await http.get("/api/v1/sessions")).json()["items"] == []


# --------------------------------------------------------------------------------------------------
# Tools that read stored data see only the caller's own


async def test_session_search_sees_only_the_callers_sessions(server: LiveServer) -> None:
    owner, other = fresh_customer(), fresh_customer()
    word = f"quokka{uuid.uuid4().hex[:8]}"
    async with await server.client(owner) as client:
        await client.turn(await client.chat(f"Tell me about the {word}", options={"text": "ok", "chunks": 1}))
    search = {"tool_calls": [call("search_sessions", query=word)]}
    async with await server.client(other) as client:
        theirs = await agentic(client, tools=["search_sessions"], options=search)
    async with await server.client(owner) as client:
        mine = await agentic(client, tools=["search_sessions"], options=search)

    assert json.loads(theirs.tool_results[0]["output"])["results"] == []
    found = json.loads(mine.tool_results[0]["output"])["results"]
    assert found and all(word in hit["snippet"] for hit in found)


# --------------------------------------------------------------------------------------------------
# The next turn, REST, export


async def test_the_next_turn_can_continue_with_or_without_tools(server: LiveServer) -> None:
    async with await server.client() as client:
        first = await agentic(
            client, tools=["calculator"], options={"tool_calls": [call("calculator", expression="9*9")]}
        )
        session = first.session_id or ""
        again = await agentic(
            client,
            "And again",
            tools=["calculator"],
            session_id=session,
            options={"tool_calls": [call("calculator", expression="1+1")]},
        )
        plain = await client.turn(await client.chat("No tools now", session_id=session))
    assert (first.status, again.status, plain.status) == ("completed", "completed", "completed")
    # The demo model answers with the results of its own turn only: the earlier exchange is history.
    assert again.text == "Tool results: calculator: 2"
    async with server.http() as http:
        body = (await http.get(f"/api/v1/sessions/{session}")).json()
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 3
    assert [bool(m["tool_steps"]) for m in body["messages"]] == [False, True, False, True, False, False]


async def test_export_and_import_carry_the_tool_steps(server: LiveServer) -> None:
    async with await server.client() as client:
        summary = await agentic(
            client,
            tools=["calculator"],
            options={"tool_calls": [call("calculator", expression="12//4")], "tool_text": "Dividing. "},
        )
    async with server.http() as http:
        exported = (await http.get(f"/api/v1/sessions/{summary.session_id}/export")).json()
        steps = exported["messages"][1]["tool_steps"]
        assert steps[0]["results"][0]["output"] == "3"
        imported = await http.post("/api/v1/sessions/import", json=exported)
        assert imported.status_code == 201, imported.text
        assert imported.json()["messages"][1]["tool_steps"] == steps
        markdown = (await http.get(f"/api/v1/sessions/{summary.session_id}/export?format=markdown")).text
        bad = {
            **exported,
            "messages": [
                exported["messages"][0],
                {
                    **exported["messages"][1],
                    "tool_steps": [
                        {"text": "x", "calls": [{"id": "1", "name": "a\u0000", "input": {}}], "results": []}
                    ],
                },
            ],
        }
        refused = await http.post("/api/v1/sessions/import", json=bad)
    assert '> **Tool** `calculator` `{"expression": "12//4"}`' in markdown
    assert "> result: 3" in markdown
    assert "Dividing." in markdown and "Tool results: calculator: 3" in markdown
    assert refused.status_code == 422


async def test_tools_are_listed_over_rest(sqlite_server: LiveServer) -> None:
    async with sqlite_server.http() as http, sqlite_server.http(None) as stranger:
        body = (await http.get("/api/v1/tools")).json()
        anonymous = await stranger.get("/api/v1/tools")
    names = [tool["name"] for tool in body["tools"]]
    assert names == ["current_time", "calculator", "search_sessions"]
    calculator = body["tools"][1]
    assert calculator["parameters"]["required"] == ["expression"] and calculator["description"]
    assert body["mcp_servers"] == []
    assert anonymous.status_code == 401
