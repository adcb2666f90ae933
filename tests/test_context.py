"""Context building: system prompt, then the newest whole messages that fit, then the prompt."""

from __future__ import annotations

from parley.context import build_context
from parley.providers.base import ChatMessage

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
