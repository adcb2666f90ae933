"""The registry: selection, validation, limits, error capture, concurrency and cancellation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from parley.errors import DatabaseFailed, ValidationFailed
from parley.tools import (
    FunctionTool,
    ToolCall,
    ToolContext,
    ToolError,
    ToolLimits,
    ToolRegistry,
    ToolResult,
    ToolSpec,
    builtin_tools,
)
from parley.tools.base import SearchHitLike, ToolFunction
from parley.tools.registry import truncate

OBJECT: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


async def no_search(customer_id: str, query: str, limit: int, offset: int) -> Sequence[SearchHitLike]:
    return []


CONTEXT = ToolContext(customer_id="c-1", search=no_search)


def tool(name: str, function: ToolFunction, parameters: Mapping[str, Any] = OBJECT) -> FunctionTool:
    return FunctionTool(ToolSpec(name, f"the {name} tool", parameters), function)


async def echo(arguments: Mapping[str, Any], context: ToolContext) -> str:
    return f"{arguments['text']} for {context.customer_id}"


ECHO = tool(
    "echo",
    echo,
    {
        "type": "object",
        "properties": {"text": {"type": "string"}, "times": {"type": "integer", "minimum": 1}},
        "required": ["text"],
        "additionalProperties": False,
    },
)


def registry(*tools: FunctionTool, limits: ToolLimits | None = None) -> ToolRegistry:
    return ToolRegistry([*builtin_tools(), ECHO, *tools], limits=limits)


# -- selection ---------------------------------------------------------------------------------------


def test_select_returns_specs_in_request_order_without_duplicates() -> None:
    selection = registry().select(["echo", "calculator", "echo"])
    assert selection.names == ["echo", "calculator"]
    assert [spec.name for spec in selection.specs] == ["echo", "calculator"]
    assert selection.specs[0].parameters["required"] == ["text"]


def test_select_nothing() -> None:
    assert not registry().select([])
    assert not registry().select(None)


def test_select_unknown_names_is_unknown_tool() -> None:
    with pytest.raises(ValidationFailed) as info:
        registry().select(["echo", "rm_rf", "launch"])
    assert info.value.code == "unknown_tool"
    assert info.value.stage == "validation"
    assert "'rm_rf', 'launch'" in info.value.message
    assert "calculator" in info.value.message  # the available ones are listed


def test_specs_for_providers() -> None:
    spec = registry().select(["echo"]).specs[0]
    assert spec.to_openai() == {
        "type": "function",
        "function": {"name": "echo", "description": "the echo tool", "parameters": ECHO.spec.parameters},
    }
    assert spec.to_anthropic() == {
        "name": "echo",
        "description": "the echo tool",
        "input_schema": ECHO.spec.parameters,
    }


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "dotted.name", "ünï"])
def test_tool_names_follow_the_providers_rule(name: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        ToolSpec(name, "x", OBJECT)


def test_parameters_must_be_an_object_schema() -> None:
    with pytest.raises(ValueError, match="type 'object'"):
        ToolSpec("t", "x", {"type": "string"})


def test_register_rejects_duplicates_and_bad_schemas() -> None:
    reg = registry()
    with pytest.raises(ValueError, match="already registered"):
        reg.register(ECHO)
    with pytest.raises(ValueError, match="invalid parameters schema"):
        reg.register(tool("bad", echo, {"type": "object", "properties": {"x": {"type": "nonsense"}}}))
    assert "bad" not in reg.names()


# -- running -----------------------------------------------------------------------------------------


async def test_run_passes_arguments_and_context() -> None:
    result = await registry().run(ToolCall("call-1", "echo", {"text": "hi"}), CONTEXT)
    assert result == ToolResult("call-1", "hi for c-1", is_error=False, code=None)


async def test_arguments_as_json_text() -> None:
    reg = registry()
    assert (await reg.run(ToolCall("1", "echo", '{"text": "json"}'), CONTEXT)).output == "json for c-1"
    no_args = await reg.run(ToolCall("2", "current_time", ""), CONTEXT)
    assert not no_args.is_error


@pytest.mark.parametrize(
    ("arguments", "detail"),
    [
        ({}, "'text' is a required property"),
        ({"text": 5}, "text: 5 is not of type 'string'"),
        ({"text": "x", "times": 0}, "times: 0 is less than the minimum of 1"),
        ({"text": "x", "extra": 1}, "Additional properties are not allowed ('extra' was unexpected)"),
        ('{"text": ', "not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
async def test_invalid_arguments_are_an_error_result(arguments: dict[str, Any] | str, detail: str) -> None:
    called = False

    async def spy(arguments: Mapping[str, Any], context: ToolContext) -> str:
        nonlocal called
        called = True
        return ""

    reg = ToolRegistry([tool("echo", spy, ECHO.spec.parameters)])
    result = await reg.run(ToolCall("c", "echo", arguments), CONTEXT)
    assert result.is_error and result.code == "invalid_arguments"
    assert result.output.startswith("Invalid arguments for tool 'echo': ")
    assert detail in result.output
    assert not called


async def test_unknown_and_unselected_tools_are_error_results() -> None:
    reg = registry()
    unknown = await reg.run(ToolCall("c", "nope", {}), CONTEXT)
    assert (unknown.is_error, unknown.code, unknown.output) == (
        True,
        "unknown_tool",
        "Tool 'nope' does not exist.",
    )
    selection = reg.select(["calculator"])
    outside = await selection.run(ToolCall("c", "echo", {"text": "x"}), CONTEXT)
    assert outside.is_error and outside.output == "Tool 'echo' is not enabled for this request."


async def test_timeout_is_an_error_result() -> None:
    started = asyncio.Event()

    async def forever(arguments: Mapping[str, Any], context: ToolContext) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    reg = registry(tool("forever", forever), limits=ToolLimits(timeout_s=0.05))
    result = await reg.run(ToolCall("c", "forever", {}), CONTEXT)
    assert started.is_set()
    assert result == ToolResult("c", "Tool 'forever' timed out after 0.05 s.", True, "tool_timeout")


async def test_output_is_capped_with_a_marker() -> None:
    async def flood(arguments: Mapping[str, Any], context: ToolContext) -> str:
        return "x" * 10_000

    reg = registry(tool("flood", flood), limits=ToolLimits(max_output_chars=1000))
    result = await reg.run(ToolCall("c", "flood", {}), CONTEXT)
    assert len(result.output) <= 1000
    shown = result.output.count("x")
    assert shown > 900
    assert (
        result.output
        == "x" * shown + f"\n[output truncated: 10000 characters in all, the first {shown} shown]"
    )
    assert not result.is_error


def test_truncate_keeps_short_output() -> None:
    assert truncate("short", 200) == "short"
    assert len(truncate("y" * 201, 200)) == 200


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        ToolLimits(timeout_s=0)
    with pytest.raises(ValueError, match="max_output_chars"):
        ToolLimits(max_output_chars=10)


async def test_exceptions_become_short_error_results(caplog: pytest.LogCaptureFixture) -> None:
    async def crash(arguments: Mapping[str, Any], context: ToolContext) -> str:
        raise RuntimeError("secret internal detail at /srv/db.py line 42")

    with caplog.at_level(logging.ERROR, logger="parley.tools"):
        result = await registry(tool("crash", crash)).run(ToolCall("c", "crash", {}), CONTEXT)
    assert result == ToolResult("c", "Tool 'crash' failed unexpectedly (RuntimeError).", True, "tool_failed")
    assert "secret" not in result.output and "Traceback" not in result.output
    assert "secret internal detail" in caplog.text  # the log keeps the details


async def test_tool_errors_and_parley_errors_are_shown() -> None:
    async def refuse(arguments: Mapping[str, Any], context: ToolContext) -> str:
        raise ToolError("The file is locked; try again later.", code="locked")

    async def database_down(arguments: Mapping[str, Any], context: ToolContext) -> str:
        raise DatabaseFailed("The search could not be run.")

    async def not_text(arguments: Mapping[str, Any], context: ToolContext) -> Any:
        return 42

    reg = registry(tool("refuse", refuse), tool("db", database_down), tool("not_text", not_text))
    refused = await reg.run(ToolCall("1", "refuse", {}), CONTEXT)
    assert refused == ToolResult("1", "The file is locked; try again later.", True, "locked")
    db = await reg.run(ToolCall("2", "db", {}), CONTEXT)
    assert db == ToolResult("2", "Tool 'db' failed: The search could not be run.", True, "database_error")
    wrong = await reg.run(ToolCall("3", "not_text", {}), CONTEXT)
    assert wrong.is_error and wrong.code == "tool_failed"


async def test_a_tools_own_timeout_or_stray_cancel_is_a_failure() -> None:
    async def own_timeout(arguments: Mapping[str, Any], context: ToolContext) -> str:
        raise TimeoutError

    async def stray_cancel(arguments: Mapping[str, Any], context: ToolContext) -> str:
        raise asyncio.CancelledError

    reg = registry(tool("own_timeout", own_timeout), tool("stray", stray_cancel))
    timed = await reg.run(ToolCall("1", "own_timeout", {}), CONTEXT)
    assert timed.output == "Tool 'own_timeout' failed unexpectedly (TimeoutError)."
    stray = await reg.run(ToolCall("2", "stray", {}), CONTEXT)
    assert stray.is_error and stray.code == "tool_failed"


# -- concurrency and cancellation --------------------------------------------------------------------


async def test_run_all_runs_calls_concurrently_in_order() -> None:
    """Each call waits until both have started: run one after the other, they would time out."""
    started: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def meet(arguments: Mapping[str, Any], context: ToolContext) -> str:
        me, other = arguments["me"], arguments["other"]
        started[me].set()
        await started[other].wait()
        return f"{me} met {other}"

    schema = {"type": "object", "properties": {"me": {"type": "string"}, "other": {"type": "string"}}}
    reg = registry(tool("meet", meet, schema), limits=ToolLimits(timeout_s=5))
    calls = [
        ToolCall("1", "meet", {"me": "a", "other": "b"}),
        ToolCall("2", "nope", {}),
        ToolCall("3", "meet", {"me": "b", "other": "a"}),
    ]
    results = await reg.run_all(calls, CONTEXT)
    assert [r.call_id for r in results] == ["1", "2", "3"]
    assert [r.output for r in results] == ["a met b", "Tool 'nope' does not exist.", "b met a"]


async def test_run_all_of_nothing() -> None:
    assert await registry().run_all([], CONTEXT) == []


async def test_cancelling_a_run_stops_a_slow_tool_at_once() -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    async def slow(arguments: Mapping[str, Any], context: ToolContext) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()
        return "late"

    reg = registry(tool("slow", slow))
    task = asyncio.create_task(reg.run(ToolCall("c", "slow", {}), CONTEXT))
    await started.wait()
    begin = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped.is_set()
    assert time.perf_counter() - begin < 0.05


async def test_cancelling_run_all_cancels_every_call() -> None:
    started = [asyncio.Event(), asyncio.Event()]
    stopped: list[int] = []

    async def slow(arguments: Mapping[str, Any], context: ToolContext) -> str:
        index = arguments["i"]
        started[index].set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.append(index)
        return "late"

    reg = registry(tool("slow", slow, {"type": "object", "properties": {"i": {"type": "integer"}}}))
    calls = [ToolCall(str(i), "slow", {"i": i}) for i in range(2)]
    task = asyncio.create_task(reg.run_all(calls, CONTEXT))
    for event in started:
        await event.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(stopped) == [0, 1]
