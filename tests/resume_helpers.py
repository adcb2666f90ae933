"""Helpers for tests that drop, resume and follow turns from several connections."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conftest import LiveServer
from tests.invariants import Frame, kind_of
from tests.wsclient import ChatClient

# A deterministic answer in 300 deltas of 5 characters: every delta says where it belongs.
TEXT = "".join(f"{n:04d} " for n in range(300))
SLOW = {"text": TEXT, "chunks": 300, "delay_ms": 3}


def resume_frame(request_id: str, after_seq: int) -> Frame:
    return {"type": "resume", "request_id": request_id, "after_seq": after_seq}


def as_camel(frames: list[Frame], dialect: str) -> list[Frame]:
    """Frames with camel names (snake's extra last frame, ``tts_not_requested``, left out)."""
    named = [{**f, "type": kind_of(f, dialect)} for f in frames]
    return [f for f in named if f["type"] != "ttsNotRequested"]


def text_of(frames: list[Frame]) -> str:
    return "".join(f["content"] for f in frames if f["type"] == "text")


async def drop(client: ChatClient, how: str) -> None:
    """Lose the connection: a clean close, or the TCP connection cut with nothing said."""
    if how == "close":
        await client.close()
    else:
        client.ws.transport.abort()
        await client.ws.wait_closed()


async def until_seq(client: ChatClient, request_id: str, seq: int, timeout: float = 15) -> None:
    """Read until the turn has an event at or beyond ``seq`` (or has ended)."""
    async with asyncio.timeout(timeout):
        while not client.finished(request_id):
            events = client.turns.get(request_id)
            if events and events[-1]["seq"] >= seq:
                return
            await client.pump()


async def resumed(client: ChatClient, request_id: str, after_seq: int, timeout: float = 15) -> list[Frame]:
    """Resume on ``client`` and read the turn to its end; the frames received for it since."""
    client.turns.pop(request_id, None)
    await client.send(resume_frame(request_id, after_seq))
    return await client.events(request_id, timeout)


async def next_error(client: ChatClient, timeout: float = 10) -> Frame:
    """The next frame outside any turn, which must be an error."""
    frame = await client.next_other(timeout)
    assert frame["type"] == "error", frame
    return frame


async def nothing_else(client: ChatClient) -> None:
    """Nothing is on its way to ``client``: a ping is answered by the very next frame."""
    await client.send({"type": "ping"})
    frame = await client.receive()
    assert frame["type"] == "pong", f"expected nothing before the pong, got {frame}"


async def stored_answer(server: LiveServer, customer: str, session_id: str) -> dict[str, Any]:
    async with server.http(customer) as http:
        response = await http.get(f"/api/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()["messages"][-1]
    return answer


class Outlet:
    """A socket that takes ``room`` frames before it is backed up (``drain`` empties it)."""

    def __init__(self, room: int = 1_000_000) -> None:
        self.frames: list[str] = []
        self.room = room
        self.detached = False

    @property
    def congested(self) -> bool:
        return len(self.frames) >= self.room

    def push(self, data: str) -> None:
        self.frames.append(data)

    def push_now(self, data: str) -> None:
        self.frames.append(data)

    async def wait_ready(self) -> None:
        return None

    def drain(self) -> list[dict[str, Any]]:
        frames, self.frames = self.frames, []
        return [json.loads(f) for f in frames]
