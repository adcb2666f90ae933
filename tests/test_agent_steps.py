"""Tool steps as stored and as the next turn's context (parley/agent.py), without a server."""

from __future__ import annotations

from typing import Any

from parley.agent import (
    MISSING_OUTPUT,
    ToolStep,
    final_text,
    history_messages,
    step_limit,
    stored_steps,
)
from parley.providers.base import ChatMessage
from parley.store.branches import ContextMessage
from parley.tools import ToolCall, ToolResult

STEPS: list[dict[str, Any]] = [
    {
        "text": "Let me add. ",
        "calls": [
            {"id": "a", "name": "calculator", "input": {"expression": "1+1"}},
            {"id": "b", "name": "current_time", "input": {}},
        ],
        "results": [
            {"call_id": "a", "output": "2", "is_error": False},
            {"call_id": "b", "output": "Cancelled", "is_error": True},
        ],
    },
    {
        "text": "",
        "calls": [{"id": "c", "name": "calculator", "input": "{bad"}],
        "results": [{"call_id": "c", "output": "not JSON", "is_error": True}],
    },
]
CONTENT = "Let me add. It is 2."


def test_steps_round_trip_through_json() -> None:
    steps = stored_steps(STEPS)
    assert [step.to_json() for step in steps] == STEPS
    assert steps[1].calls[0].arguments == "{bad"


def test_structured_history_replays_every_step_then_the_final_text() -> None:
    history = [ContextMessage("user", "q"), ContextMessage("assistant", CONTENT, STEPS)]
    a = ToolCall("a", "calculator", {"expression": "1+1"})
    b = ToolCall("b", "current_time", {})
    c = ToolCall("c", "calculator", "{bad")
    assert history_messages(history, structured=True) == [
        ChatMessage("user", "q"),
        ChatMessage("assistant", "Let me add. ", tool_calls=(a, b)),
        ChatMessage("tool", "2", tool_call_id="a"),
        ChatMessage("tool", "Cancelled", tool_call_id="b", is_error=True),
        ChatMessage("assistant", "", tool_calls=(c,)),
        ChatMessage("tool", "not JSON", tool_call_id="c", is_error=True),
        ChatMessage("assistant", "It is 2."),
    ]


def test_plain_history_tells_the_exchange_as_text() -> None:
    (message,) = history_messages([ContextMessage("assistant", CONTENT, STEPS)], structured=False)
    assert message == ChatMessage(
        "assistant",
        "Let me add. \n"
        '[Called tool calculator with {"expression": "1+1"}]\n'
        "[Tool result: 2]\n"
        "[Called tool current_time with {}]\n"
        "[Tool error: Cancelled]\n"
        "[Called tool calculator with {bad]\n"
        "[Tool error: not JSON]\n"
        "It is 2.",
    )


def test_messages_without_steps_are_unchanged() -> None:
    history = [ContextMessage("user", "q"), ContextMessage("assistant", "a")]
    for structured in (True, False):
        assert history_messages(history, structured) == [
            ChatMessage("user", "q"),
            ChatMessage("assistant", "a"),
        ]


def test_an_answer_that_ended_in_a_step_has_no_final_text() -> None:
    messages = history_messages([ContextMessage("assistant", "Let me add. ", STEPS[:1])], structured=True)
    assert messages[-1].role == "tool"


def test_malformed_steps_are_skipped_and_missing_results_filled_in() -> None:
    raw = [
        "junk",
        {"text": "no calls", "calls": []},
        {"text": 5, "calls": [{"id": "x", "name": "calculator"}, "junk"], "results": [{"call_id": "other"}]},
    ]
    (step,) = stored_steps(raw)
    assert step == ToolStep("", [ToolCall("x", "calculator", {})], [ToolResult("x", MISSING_OUTPUT, True)])
    assert stored_steps(None) == [] and stored_steps({"text": "x"}) == []


def test_results_match_by_id_when_out_of_order() -> None:
    raw = [
        {
            "text": "",
            "calls": [{"id": "a", "name": "t", "input": {}}, {"id": "b", "name": "t", "input": {}}],
            "results": [
                {"call_id": "b", "output": "B", "is_error": False},
                {"call_id": "a", "output": "A", "is_error": False},
            ],
        }
    ]
    (step,) = stored_steps(raw)
    assert [r.output for r in step.results if r is not None] == ["A", "B"]


def test_the_server_limit_caps_the_requested_steps() -> None:
    assert step_limit(None, 10) == 10
    assert step_limit(3, 10) == 3
    assert step_limit(50, 10) == 10


def test_final_text_when_content_and_steps_disagree() -> None:
    steps = stored_steps(STEPS)
    assert final_text(CONTENT, steps) == "It is 2."
    assert final_text("Let me", steps) == ""  # the content lagged behind the steps (a crash mid-turn)
    assert final_text("Something else.", steps) == "Something else."  # never lose the answer's text
