"""The model's context: system prompt, then as much stored history as fits the budget, then the prompt."""

from __future__ import annotations

from collections.abc import Sequence

from parley.providers.base import ChatMessage, arguments_json


def build_context(
    system_prompt: str | None, history: Sequence[ChatMessage], prompt: str, budget_chars: int
) -> list[ChatMessage]:
    """Most recent history first, whole messages only, until the budget (in characters) is spent.

    The system prompt and the new prompt are always sent; history is what gives way. What is kept opens
    with a question: never with an answer, a tool result or a step's tool calls whose question was cut, so
    an assistant's calls always travel with their results.
    """
    fixed = [ChatMessage("system", system_prompt)] if system_prompt else []
    left = budget_chars - len(prompt) - sum(len(m.content) for m in fixed)
    kept: list[ChatMessage] = []
    for message in reversed(history):
        size = _size(message)
        if size > left:
            break
        kept.append(message)
        left -= size
    kept.reverse()
    return [*fixed, *_start_with_user(kept), ChatMessage("user", prompt)]


def _size(message: ChatMessage) -> int:
    """Characters a message costs: its text, and for a tool step its calls' names and arguments."""
    if not message.tool_calls:
        return len(message.content)
    calls = sum(len(call.name) + len(arguments_json(call)) for call in message.tool_calls)
    return len(message.content) + calls


def _start_with_user(history: list[ChatMessage]) -> list[ChatMessage]:
    """Drop leading answers (and tool steps) whose question was cut: vendors expect the conversation to
    open with the user, and every tool result to follow the call it answers."""
    first_user = next((i for i, m in enumerate(history) if m.role not in ("assistant", "tool")), len(history))
    return history[first_user:]
