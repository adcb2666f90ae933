"""The model's context: system prompt, then as much stored history as fits the budget, then the prompt."""

from __future__ import annotations

from collections.abc import Sequence

from parley.providers.base import ChatMessage


def build_context(
    system_prompt: str | None, history: Sequence[ChatMessage], prompt: str, budget_chars: int
) -> list[ChatMessage]:
    """Most recent history first, whole messages only, until the budget (in characters) is spent.

    The system prompt and the new prompt are always sent; history is what gives way.
    """
    fixed = [ChatMessage("system", system_prompt)] if system_prompt else []
    left = budget_chars - len(prompt) - sum(len(m.content) for m in fixed)
    kept: list[ChatMessage] = []
    for message in reversed(history):
        if len(message.content) > left:
            break
        kept.append(message)
        left -= len(message.content)
    kept.reverse()
    return [*fixed, *_start_with_user(kept), ChatMessage("user", prompt)]


def _start_with_user(history: list[ChatMessage]) -> list[ChatMessage]:
    """Drop leading answers whose question was cut: vendors expect the conversation to open with the user."""
    first_user = next((i for i, m in enumerate(history) if m.role != "assistant"), len(history))
    return history[first_user:]
