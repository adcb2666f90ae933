"""Context building: system prompt, then the newest whole messages that fit, then the prompt."""

from __future__ import annotations

from parley.context import build_context
from parley.providers.base import ChatMessage
from parley.tools import ToolCall

HISTORY = [
    ChatMessage("user", "a" * 10),
    ChatMessage("assistant", "b" * 10),
    ChatMessage("user", "c" * 10),
    ChatMessage("assistant", "d" * 10),
]


def test_everything_fits() -> None:
    messages = build_context("sys", HISTORY, "now", 1000)
    assert messages == [ChatMessage("system", "sys"), *HISTORY, ChatMessage("user", "now")]


def test_oldest_messages_give_way_whole() -> None:
    messages = build_context(None, HISTORY, "now", 3 + 25)
    assert messages == [HISTORY[2], HISTORY[3], ChatMessage("user", "now")]


def test_never_opens_with_an_orphaned_answer() -> None:
    messages = build_context(None, HISTORY, "now", 3 + 10)
    assert messages == [ChatMessage("user", "now")]


def test_prompt_and_system_always_sent() -> None:
    messages = build_context("s" * 50, HISTORY, "p" * 50, 10)
    assert messages == [ChatMessage("system", "s" * 50), ChatMessage("user", "p" * 50)]


# -- agentic answers: their tool steps travel whole, or not at all ---------------------------------------

CALL = ToolCall("c1", "calculator", {"expression": "6*7"})
EXCHANGE = [
    ChatMessage("user", "q" * 10),
    ChatMessage("assistant", "", tool_calls=(CALL,)),
    ChatMessage("tool", "42", tool_call_id="c1"),
    ChatMessage("assistant", "f" * 10),
    ChatMessage("user", "u" * 10),
    ChatMessage("assistant", "v" * 10),
]


def test_a_tool_exchange_that_fits_is_kept_in_order() -> None:
    assert build_context(None, EXCHANGE, "now", 1000) == [*EXCHANGE, ChatMessage("user", "now")]


def test_calls_count_toward_the_budget() -> None:
    call_size = len("calculator") + len('{"expression": "6*7"}')
    whole = 10 + call_size + 2 + 10 + 20
    assert build_context(None, EXCHANGE, "now", 3 + whole)[0] == EXCHANGE[0]
    assert build_context(None, EXCHANGE, "now", 3 + whole - 1) == [*EXCHANGE[4:], ChatMessage("user", "now")]


def test_never_opens_with_a_tool_result_or_a_cut_step() -> None:
    """Whatever the cut, what remains of a cut turn (its results, its final text) is dropped with it."""
    for budget in range(3, 80):
        messages = build_context(None, EXCHANGE, "now", budget)
        assert messages[0].role == "user", budget
        for i, message in enumerate(messages):
            if message.role == "tool":  # a result always follows the call it answers
                assert any(c.call_id == message.tool_call_id for c in messages[i - 1].tool_calls) or (
                    messages[i - 1].role == "tool"
                )
