"""PROTOCOL section 3, as one function every test runs over a turn's events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from parley.protocol import SNAKE_STREAM_ERROR, SNAKE_TTS_NOT_REQUESTED, Event, wire_name

Frame = dict[str, Any]


@dataclass
class TurnSummary:
    events: list[Frame]
    status: str
    text: str
    request_id: str
    session_id: str | None = None
    user_message_id: str | None = None
    ai_message_id: str | None = None
    usage: dict[str, Any] | None = None
    error: Frame | None = None
    kinds: list[str] = field(default_factory=list)
    tool_uses: list[Frame] = field(default_factory=list)  # toolUse contents: {call_id, name, input}
    tool_results: list[Frame] = field(
        default_factory=list
    )  # toolResult contents: {call_id, output, is_error}

    def only(self, kind: str) -> Frame:
        """The turn's one event of ``kind`` (camel name; the dialect's wire name too)."""
        (event,) = [e for e, k in zip(self.events, self.kinds, strict=True) if k == kind]
        return event


def kind_of(frame: Frame, dialect: str = "camel") -> str:
    """The camel name of a wire frame, whatever the dialect."""
    name = frame["type"]
    if dialect == "camel":
        return str(name)
    if name == SNAKE_STREAM_ERROR:
        return Event.ERROR.value
    if name == SNAKE_TTS_NOT_REQUESTED:
        return "ttsNotRequested"
    for event in Event:
        if wire_name("snake", event) == name:
            return event.value
    raise AssertionError(f"unknown snake event {name!r}")


def check_turn(events: list[Frame], dialect: str = "camel") -> TurnSummary:
    """Assert every invariant of a finished turn and return what it said."""
    assert events, "no events"
    kinds = [kind_of(e, dialect) for e in events]
    request_id = events[0]["request_id"]
    assert isinstance(request_id, str) and request_id
    assert all(e["request_id"] == request_id for e in events), "request_id differs within the turn"
    assert [e["seq"] for e in events] == list(range(len(events))), (
        f"seq not 0..n-1: {[e['seq'] for e in events]}"
    )
    assert kinds[0] == "working", f"first event is {kinds[0]}"
    assert isinstance(events[0]["content"], dict) and {"request_type", "model", "provider"} <= set(
        events[0]["content"]
    )

    final_kinds = (
        ["fullProcessComplete", "ttsNotRequested"] if dialect == "snake" else ["fullProcessComplete"]
    )
    assert kinds[-len(final_kinds) :] == final_kinds, f"turn does not end with {final_kinds}: {kinds}"
    assert kinds.count("fullProcessComplete") == 1
    status = events[-1]["status"]
    assert all(e["status"] == status for e in events[-len(final_kinds) :])
    assert status in ("completed", "cancelled", "error")
    body = kinds[: -len(final_kinds)]

    text = "".join(e["content"] for e, k in zip(events, kinds, strict=True) if k == "text")
    summary = TurnSummary(events, status, text, request_id, kinds=kinds)
    errors = [e for e, k in zip(events, kinds, strict=True) if k == "error"]
    assert len(errors) <= 1, "more than one error in a turn"
    if errors:
        summary.error = errors[0]
        assert errors[0]["stage"] in ("validation", "auth", "provider", "database", "limits", "internal")
        assert isinstance(errors[0]["code"], str) and isinstance(errors[0]["content"], str)
        assert "Traceback" not in errors[0]["content"]
        if dialect == "snake":
            expected = SNAKE_STREAM_ERROR if errors[0]["stage"] == "provider" else "error"
            assert errors[0]["type"] == expected

    _check_tools(summary, events, kinds)

    if "dbOperationExecuted" in body:
        assert body.count("dbOperationExecuted") == 1
        assert body[-1] == "dbOperationExecuted", (
            f"dbOperationExecuted must come right before the end: {kinds}"
        )
        db = events[kinds.index("dbOperationExecuted")]
        assert isinstance(db["content"], str), "dbOperationExecuted content must be a JSON string"
        content = json.loads(db["content"])
        assert content["session_id"] == db["session_id"]
        assert content["status"] == status
        summary.session_id = content["session_id"]
        summary.user_message_id = content["user_message_id"]
        summary.ai_message_id = content["ai_message_id"]
        summary.usage = content["usage"]
        first_with_session = next(i for i, e in enumerate(events) if "session_id" in e)
        assert all(e.get("session_id") == summary.session_id for e in events[first_with_session:])
        assert all("session_id" in e for e, k in zip(events, kinds, strict=True) if k == "text")

    if status == "completed":
        assert "dbOperationExecuted" in body and not errors and "cancelled" not in body
    elif status == "cancelled":
        tail = body[body.index("cancelled") :]
        assert tail == ["cancelled", "dbOperationExecuted"], f"cancel order wrong: {kinds}"
    elif summary.error is not None and summary.error["stage"] == "provider":
        assert body[-2:] == ["error", "dbOperationExecuted"], f"provider failure order wrong: {kinds}"
    elif summary.error is not None and summary.error["code"] == "tool_step_limit":
        assert summary.error["stage"] == "limits"
        assert body[-2:] == ["error", "dbOperationExecuted"], f"step limit order wrong: {kinds}"
    elif summary.error is not None and summary.error["stage"] == "internal" and body[-1] != "error":
        # a bug mid-stream: the answer is still stored, as an error
        assert body[-2:] == ["error", "dbOperationExecuted"], f"internal failure order wrong: {kinds}"
    elif summary.error is not None and summary.error["code"] == "interrupted" and body[-1] != "error":
        # its server died mid-answer; another closed the answer from the turn's log (stored, as interrupted)
        assert body[-2:] == ["error", "dbOperationExecuted"], f"interrupted order wrong: {kinds}"
    elif summary.error is not None and summary.error["stage"] in ("database", "internal"):
        assert "dbOperationExecuted" not in body and body[-1] == "error", f"unsaved turn order wrong: {kinds}"
    else:
        assert body == ["working", "error"], f"a refused turn is working, error, complete: {kinds}"
    return summary


def _check_tools(summary: TurnSummary, events: list[Frame], kinds: list[str]) -> None:
    """Tool events: well formed, after ``working`` and before the closing events; every ``toolUse`` has
    exactly one later ``toolResult`` with its call_id, and every ``toolResult`` answers an open call."""
    pending: dict[str, int] = {}
    closing = ("cancelled", "error", "dbOperationExecuted", "fullProcessComplete")
    closed = False
    for event, kind in zip(events, kinds, strict=True):
        closed = closed or kind in closing
        if kind == "toolUse":
            content = event["content"]
            assert set(content) == {"call_id", "name", "input"}, f"toolUse content: {content}"
            assert isinstance(content["call_id"], str) and isinstance(content["name"], str)
            assert isinstance(content["input"], dict | str)
            assert not closed, f"toolUse after the turn's closing events: {kinds}"
            # Ids are the model's: a later step may reuse one, but never while its call is unanswered.
            assert pending.get(content["call_id"]) != 1, f"call {content['call_id']} announced twice"
            pending[content["call_id"]] = 1
            summary.tool_uses.append(content)
        elif kind == "toolResult":
            content = event["content"]
            assert set(content) == {"call_id", "output", "is_error"}, f"toolResult content: {content}"
            assert isinstance(content["output"], str) and isinstance(content["is_error"], bool)
            assert not closed, f"toolResult after the turn's closing events: {kinds}"
            assert pending.get(content["call_id"]) == 1, f"toolResult without its toolUse: {content}"
            pending[content["call_id"]] = 2
            summary.tool_results.append(content)
    unanswered = [call_id for call_id, state in pending.items() if state == 1]
    assert not unanswered, f"toolUse without a toolResult: {unanswered}"
