"""The emitter numbers and names events per dialect; the routing table maps models to providers."""

from __future__ import annotations

import json

from parley.protocol import TurnEmitter


def emitted(dialect: str) -> list[dict[str, object]]:
    frames: list[str] = []
    emitter = TurnEmitter(dialect, "r1", frames.append)  # type: ignore[arg-type]
    emitter.working("text", "demo", "demo")
    emitter.session_id = "s1"
    emitter.text("Hel")
    emitter.reasoning("hmm")
    emitter.error("provider", "provider_error", "boom")
    emitter.db_operation("u1", "a1", "error", None)
    emitter.complete_turn("error")
    emitter.complete_turn("error")  # a second completion is never sent
    return [json.loads(f) for f in frames]


def test_camel_events() -> None:
    frames = emitted("camel")
    assert [f["type"] for f in frames] == [
        "working",
        "text",
        "reasoning",
        "error",
        "dbOperationExecuted",
        "fullProcessComplete",
    ]
    assert [f["seq"] for f in frames] == list(range(6))
    assert all(f["request_id"] == "r1" for f in frames)
    assert "session_id" not in frames[0]
    assert all(f["session_id"] == "s1" for f in frames[1:])
    content = frames[4]["content"]
    assert isinstance(content, str)
    assert json.loads(content) == {
        "session_id": "s1",
        "user_message_id": "u1",
        "ai_message_id": "a1",
        "status": "error",
        "usage": None,
    }


def test_snake_events() -> None:
    frames = emitted("snake")
    assert [f["type"] for f in frames] == [
        "working",
        "text_chunk",
        "thinking_chunk",
        "stream_error",
        "db_operation_executed",
        "text_completed",
        "tts_not_requested",
    ]
    assert [f["seq"] for f in frames] == list(range(7))
    assert frames[-1]["status"] == frames[-2]["status"] == "error"


def test_spliced_text_frames_equal_encoded_ones() -> None:
    """``text`` splices its frames from a prefix; they must say what ``_send`` would, for any delta."""
    spliced: list[str] = []
    encoded: list[str] = []
    fast = TurnEmitter("snake", 'r"1\\', spliced.append)
    slow = TurnEmitter("snake", 'r"1\\', encoded.append)
    deltas = ["plain", 'quote " and \\ backslash', "line\nbreak\t", "emoji 🎉 and \u2028", ""]
    for n, delta in enumerate(deltas):
        if n == 2:
            fast.session_id = slow.session_id = "s-1"
        fast.text(delta)
        slow._send({"type": "text_chunk", "content": delta})
    assert [json.loads(f) for f in spliced] == [json.loads(f) for f in encoded]


def test_the_moments_a_user_waits_for_go_through_the_urgent_sink() -> None:
    """``working``, the first ``text`` and ``cancelled`` are written at once (``Outbox.push_now``); the
    rest queue for the writer. One numbering across both sinks."""
    routine: list[str] = []
    urgent: list[str] = []
    emitter = TurnEmitter("camel", "r1", routine.append, urgent.append)
    emitter.working("text", "demo", "demo")
    emitter.session_id = "s1"
    emitter.text("a")
    emitter.text("b")
    emitter.text("c")
    emitter.cancelled()
    emitter.db_operation("u1", "a1", "cancelled", None)
    emitter.complete_turn("cancelled")
    kinds = [(json.loads(f)["type"], json.loads(f)["seq"]) for f in urgent]
    assert kinds == [("working", 0), ("text", 1), ("cancelled", 4)]
    assert [json.loads(f)["seq"] for f in routine] == [2, 3, 5, 6]
    assert [json.loads(f).get("content") for f in routine[:2]] == ["b", "c"]
