"""A turn's events: the emitter logs them dialect-neutral; a follower names and numbers them per dialect."""

from __future__ import annotations

import json
from typing import Any

from parley.protocol import TurnEmitter
from parley.streams import Follower, TurnStreams


class Socket:
    """An outlet that keeps what it is given, and which frames came through ``push_now``."""

    congested = False
    detached = False

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.urgent: list[str] = []

    def push(self, data: str) -> None:
        self.frames.append(data)

    def push_now(self, data: str) -> None:
        self.frames.append(data)
        self.urgent.append(data)

    async def wait_ready(self) -> None:
        return None

    def decoded(self) -> list[dict[str, Any]]:
        return [json.loads(f) for f in self.frames]


def followed(dialect: str, request_id: str = "r1") -> tuple[TurnEmitter, Socket]:
    streams = TurnStreams(ttl_s=60, cap_bytes=1 << 20, turn_cap_bytes=1 << 20)
    log = streams.open("c1", request_id)
    socket = Socket()
    log.attach(Follower(log, socket, dialect))  # type: ignore[arg-type]
    return TurnEmitter(log, request_id), socket


def emitted(dialect: str) -> list[dict[str, Any]]:
    emitter, socket = followed(dialect)
    emitter.working("text", "demo", "demo")
    emitter.set_session("s1")
    emitter.text("Hel")
    emitter.reasoning("hmm")
    emitter.error("provider", "provider_error", "boom")
    emitter.db_operation("u1", "a1", "error", None)
    emitter.complete_turn("error")
    emitter.complete_turn("error")  # a second completion is never sent
    return socket.decoded()


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
    assert frames[3]["stage"] == "provider" and frames[3]["code"] == "provider_error"
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
    assert frames[-1]["session_id"] == "s1" and frames[-1]["request_id"] == "r1"


def test_spliced_frames_equal_encoded_ones() -> None:
    """Frames are spliced from a prefix made once per turn; they must say what encoding the whole frame
    would, for any delta and any request_id."""
    request_id = 'r"1\\ \u2028'
    emitter, socket = followed("snake", request_id)
    deltas = ["plain", 'quote " and \\ backslash', "line\nbreak\t", "emoji 🎉 and \u2028", ""]
    expected = []
    for n, delta in enumerate(deltas):
        if n == 2:
            emitter.set_session("s-1")
        emitter.text(delta)
        frame = {"type": "text_chunk", "request_id": request_id, "seq": n, "content": delta}
        expected.append(frame | ({"session_id": "s-1"} if n >= 2 else {}))
    assert socket.decoded() == expected


def test_model_text_is_sent_clean_and_returned_as_sent() -> None:
    emitter, socket = followed("camel")
    emitter.set_session("s1")
    assert emitter.text("a\x00b\ud800") == "a\ufffdb\ufffd"
    assert emitter.reasoning("r\udfff") == "r\ufffd"
    assert [f["content"] for f in socket.decoded()] == ["a\ufffdb\ufffd", "r\ufffd"]


def test_the_moments_a_user_waits_for_are_urgent_and_nothing_follows_cancelled_but_the_end() -> None:
    """``working``, the first ``text`` and ``cancelled`` are written at once (``Outbox.push_now``); the
    rest queue for the writer. One numbering across both; after ``cancelled`` the answer is cut."""
    emitter, socket = followed("camel")
    emitter.working("text", "demo", "demo")
    emitter.set_session("s1")
    emitter.text("a")
    emitter.text("b")
    emitter.text("c")
    emitter.cancelled()
    assert emitter.text("late") is None
    emitter.tool_result("x", "late", False)
    emitter.cancelled()
    emitter.db_operation("u1", "a1", "cancelled", None)
    emitter.complete_turn("cancelled")
    kinds = [(json.loads(f)["type"], json.loads(f)["seq"]) for f in socket.urgent]
    assert kinds == [("working", 0), ("text", 1), ("cancelled", 4)]
    assert [f["type"] for f in socket.decoded()] == [
        "working",
        "text",
        "text",
        "text",
        "cancelled",
        "dbOperationExecuted",
        "fullProcessComplete",
    ]
