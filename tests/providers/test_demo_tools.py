"""The demo model's scripted tool calls: single and multi-step turns that run offline, and strict options."""

from __future__ import annotations

from typing import Any

import pytest

from parley.errors import ProviderFailed, ValidationFailed
from parley.providers.base import ChatMessage, ProviderEvent, ProviderRequest, Usage
from parley.providers.demo import DemoProvider
from parley.tools.base import ToolCall, ToolResult
from tests.providers.tool_helpers import TOOLS, kinds, ready, run_tool_loop, started, step_end, text_of

CALC = {"name": "calculator", "arguments": {"expression": "2+2"}}
CLOCK = {"name": "current_time", "arguments": {"timezone": "UTC"}}


def ask(options: dict[str, Any], *history: ChatMessage, prompt: str = "What is 2+2?") -> ProviderRequest:
    return ProviderRequest("demo", [*history, ChatMessage("user", prompt)], options=options, tools=TOOLS)


async def collect(request: ProviderRequest) -> list[ProviderEvent]:
    return [event async for event in DemoProvider().stream(request)]


# --- one step ---------------------------------------------------------------------------------------


async def test_first_step_makes_the_scripted_calls_after_its_text() -> None:
    events = await collect(ask({"tool_calls": [CALC, CLOCK], "tool_text": "Let me check."}))
    assert kinds(events) == [
        *["TextDelta"] * 3,
        "ToolCallStarted",
        "ToolCallReady",
        "ToolCallStarted",
        "ToolCallReady",
        "StepEnd",
    ]
    assert text_of(events) == "Let me check."
    calls = [e.call for e in ready(events)]
    assert [(c.name, c.arguments) for c in calls] == [
        ("calculator", {"expression": "2+2"}),
        ("current_time", {"timezone": "UTC"}),
    ]
    assert [(s.call_id, s.name) for s in started(events)] == [(c.call_id, c.name) for c in calls]
    assert len({c.call_id for c in calls}) == 2
    end = step_end(events)
    assert end.reason == "tool_use"
    assert end.message == ChatMessage("assistant", "Let me check.", tool_calls=tuple(calls))
    assert events[-2] == Usage(output_tokens=3 + 2)  # three text pieces, two calls


async def test_after_the_results_it_answers_with_them() -> None:
    first = step_end(await collect(ask({"tool_calls": [CALC]})))
    (call,) = first.tool_calls
    result = ChatMessage.tool_result(ToolResult(call.call_id, "4"))
    request = ask({"tool_calls": [CALC]}, prompt="What is 2+2?")
    events = await collect(
        ProviderRequest(
            "demo", [*request.messages, first.message, result], options=request.options, tools=TOOLS
        )
    )
    assert kinds(events)[-1] == "StepEnd"
    assert "ToolCallStarted" not in kinds(events)
    assert text_of(events) == "Tool results: calculator: 4"
    end = step_end(events)
    assert (end.reason, end.tool_calls) == ("end", ())
    assert end.message == ChatMessage("assistant", "Tool results: calculator: 4")


async def test_a_whole_loop_runs_offline_through_the_registry() -> None:
    run = await run_tool_loop(DemoProvider(), ask({"tool_calls": [CALC, {"name": "calculator"}]}))
    assert len(run.steps) == 2
    assert text_of(run.steps[-1]) == (
        "Tool results: calculator: 4; calculator (error): Invalid arguments for tool 'calculator': "
        "'expression' is a required property"
    )
    assert [m.role for m in run.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert run.messages[3].is_error


async def test_without_tools_offered_the_script_is_ignored() -> None:
    request = ProviderRequest("demo", [ChatMessage("user", "hi")], options={"tool_calls": [CALC]})
    events = await collect(request)
    assert set(kinds(events)) == {"TextDelta"}  # no tool events, and no StepEnd: as before tools
    assert "You said" in text_of(events)


async def test_tool_choice_none_makes_it_answer() -> None:
    request = ask({"tool_calls": [CALC]})
    events = await collect(
        ProviderRequest("demo", request.messages, options=request.options, tools=TOOLS, tool_choice="none")
    )
    assert "ToolCallStarted" not in kinds(events)
    assert step_end(events).reason == "end"


async def test_text_option_answers_with_tools_offered_and_no_script() -> None:
    events = await collect(ask({"text": "Plain answer."}))
    assert text_of(events) == "Plain answer."
    assert step_end(events).message == ChatMessage("assistant", "Plain answer.")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"expression": "1+1"}', {"expression": "1+1"}),  # JSON text is decoded, as a real model's
        ('{"expression": "1+', '{"expression": "1+'),  # invalid JSON stays raw for the registry
        ("[1, 2]", "[1, 2]"),  # not an object: raw too
        ("", {}),
        ({}, {}),
    ],
)
async def test_scripted_arguments(arguments: object, expected: object) -> None:
    events = await collect(ask({"tool_calls": [{"name": "calculator", "arguments": arguments}]}))
    (event,) = ready(events)
    assert event.call.arguments == expected


async def test_invalid_json_becomes_an_error_result_the_next_step_reports() -> None:
    script = {"tool_calls": [{"name": "calculator", "arguments": '{"expression": '}]}
    run = await run_tool_loop(DemoProvider(), ask(script))
    tool_message = run.messages[2]
    assert tool_message.is_error
    assert tool_message.content.startswith("Invalid arguments for tool 'calculator': not JSON")
    assert text_of(run.steps[-1]).startswith("Tool results: calculator (error): Invalid arguments")


# --- several steps -------------------------------------------------------------------------------------


async def test_multi_step_script_makes_each_steps_calls_in_turn() -> None:
    script = {"tool_steps": [[CLOCK], [CALC, {"name": "calculator", "arguments": {"expression": "6*7"}}]]}
    run = await run_tool_loop(DemoProvider(), ask(script))
    assert [[e.call.name for e in ready(step)] for step in run.steps] == [
        ["current_time"],
        ["calculator", "calculator"],
        [],
    ]
    assert [step_end(step).reason for step in run.steps] == ["tool_use", "tool_use", "end"]
    answer = text_of(run.steps[-1])
    assert answer.startswith("Tool results: current_time: {")
    assert answer.endswith("calculator: 4; calculator: 42")


async def test_a_new_user_message_starts_the_script_again() -> None:
    call = ToolCall("call_old", "calculator", {"expression": "1+1"})
    history = [
        ChatMessage("user", "earlier"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage.tool_result(ToolResult("call_old", "2")),
        ChatMessage("assistant", "Tool results: calculator: 2"),
    ]
    events = await collect(ask({"tool_steps": [[CALC], [CLOCK]]}, *history))
    assert [e.call.name for e in ready(events)] == ["calculator"]  # step 1 of this turn, not step 2


async def test_repeat_tool_calls_never_stops_until_told_to_answer() -> None:
    run = await run_tool_loop(
        DemoProvider(), ask({"tool_calls": [CALC], "repeat_tool_calls": True}), max_steps=4
    )
    assert [len(ready(step)) for step in run.steps] == [1, 1, 1, 0]  # the last step had tool_choice="none"
    assert text_of(run.steps[-1]) == "Tool results: " + "; ".join(["calculator: 4"] * 3)


async def test_script_used_up_without_repeat_answers() -> None:
    run = await run_tool_loop(DemoProvider(), ask({"tool_steps": [[CALC]]}), max_steps=10)
    assert len(run.steps) == 2


async def test_delay_and_fail_after_still_apply_in_tool_steps() -> None:
    events = await collect(ask({"tool_calls": [CALC], "tool_text": "a b c", "delay_ms": 1}))
    assert text_of(events) == "a b c"
    with pytest.raises(ProviderFailed, match="failed after 1 deltas"):
        await collect(ask({"tool_calls": [CALC], "tool_text": "a b c", "fail_after": 1}))


# --- options ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"tool_calls": []}, "options.tool_calls must be a list of 1 to 32 calls"),
        ({"tool_calls": CALC}, "options.tool_calls must be a list"),
        ({"tool_calls": [CALC] * 33}, "options.tool_calls must be a list of 1 to 32"),
        ({"tool_calls": ["calculator"]}, "options.tool_calls[0] must be an object"),
        ({"tool_calls": [CALC, {"arguments": {}}]}, "options.tool_calls[1].name must be a tool name"),
        ({"tool_calls": [{"name": "bad name"}]}, "options.tool_calls[0].name must be a tool name"),
        ({"tool_calls": [{"name": "x" * 65}]}, "options.tool_calls[0].name"),
        ({"tool_calls": [{"name": "calculator", "arguments": 5}]}, "options.tool_calls[0].arguments"),
        ({"tool_calls": [{"name": "calculator", "arguments": [1]}]}, "options.tool_calls[0].arguments"),
        (
            {"tool_calls": [{"name": "calculator", "args": {}}]},
            "options.tool_calls[0] has unknown keys ['args']",
        ),
        ({"tool_steps": []}, "options.tool_steps must be a list of 1 to 100 steps"),
        ({"tool_steps": [CALC]}, "options.tool_steps[0] must be a list"),
        ({"tool_steps": [[CALC], []]}, "options.tool_steps[1] must be a list of 1 to 32 calls"),
        ({"tool_steps": [[CALC], [{"name": ""}]]}, "options.tool_steps[1][0].name"),
        ({"tool_steps": [[CALC]] * 101}, "options.tool_steps must be a list of 1 to 100"),
        ({"tool_calls": [CALC], "tool_steps": [[CALC]]}, "cannot be combined"),
        ({"repeat_tool_calls": True}, "options.repeat_tool_calls needs options.tool_calls"),
        (
            {"tool_calls": [CALC], "repeat_tool_calls": "yes"},
            "options.repeat_tool_calls must be true or false",
        ),
        ({"tool_text": 3}, "options.tool_text must be a string"),
    ],
)
def test_bad_tool_scripts_are_validation_errors(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationFailed) as failure:
        DemoProvider().check_options(options)
    assert failure.value.code == "invalid_request"
    assert says in failure.value.message


@pytest.mark.parametrize(
    "options",
    [
        {"tool_calls": [CALC]},
        {"tool_calls": [{"name": "no_such_tool"}], "tool_text": ""},  # unknown tools are the registry's call
        {"tool_calls": [{"name": "calculator", "arguments": "{not json"}]},
        {"tool_steps": [[CALC], [CALC, CLOCK]], "repeat_tool_calls": True, "tool_text": "Checking."},
        {"repeat_tool_calls": False},
    ],
)
def test_good_tool_scripts_pass(options: dict[str, Any]) -> None:
    DemoProvider().check_options(options)


async def test_a_bad_script_fails_the_stream_too() -> None:
    """Should a request skip check_options, the stream refuses the script rather than guess."""
    with pytest.raises(ValidationFailed):
        await collect(ask({"tool_calls": [{"name": 5}]}))


def test_demo_supports_tools() -> None:
    assert DemoProvider.supports_tools
