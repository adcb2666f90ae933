"""A real WebSocket client for tests: sends chat requests, collects each turn's events by request_id."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.invariants import Frame, TurnSummary, check_turn, kind_of

DEFAULT_TIMEOUT_S = 15.0


def chat_frame(
    prompt: Any = "Hello",
    *,
    session_id: str = "",
    model: str = "demo",
    request_id: str | None = None,
    options: dict[str, Any] | None = None,
    **text_settings: Any,
) -> Frame:
    """A chat request as PROTOCOL section 2 shows it."""
    return {
        "request_type": "text",
        "request_id": request_id or uuid.uuid4().hex,
        "user_input": {"prompt": prompt, "chat_history": [], "session_id": session_id},
        "user_settings": {"text": {"model": model, "options": options or {}, **text_settings}},
    }


class ChatClient:
    """One connection. Events of other turns and non-turn frames are kept aside, never dropped."""

    def __init__(self, ws: ClientConnection, dialect: str) -> None:
        self.ws = ws
        self.dialect = dialect
        self.ready: Frame = {}
        self.turns: dict[str, list[Frame]] = defaultdict(list)
        self.other: list[Frame] = []

    @classmethod
    async def open(cls, url: str, token: str | None, dialect: str | None = None, **kwargs: Any) -> ChatClient:
        query = [f"token={token}"] if token else []
        if dialect:
            query.append(f"events={dialect}")
        full = url + ("?" + "&".join(query) if query else "")
        ws = await connect(full, max_size=None, open_timeout=10, **kwargs)
        client = cls(ws, dialect or "camel")
        client.ready = await client.receive()
        return client

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, frame: Frame) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def chat(self, prompt: Any = "Hello", **kwargs: Any) -> str:
        """Send a chat request; return its request_id."""
        frame = chat_frame(prompt, **kwargs)
        await self.send(frame)
        return str(frame["request_id"])

    async def receive(self, timeout: float = DEFAULT_TIMEOUT_S) -> Frame:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame: Frame = orjson.loads(raw)
        return frame

    async def pump(self, timeout: float = DEFAULT_TIMEOUT_S) -> Frame:
        """Receive one frame and file it under its turn (or ``other``)."""
        frame = await self.receive(timeout)
        if "seq" in frame and "request_id" in frame:
            self.turns[frame["request_id"]].append(frame)
        else:
            self.other.append(frame)
        return frame

    def finished(self, request_id: str) -> bool:
        events = self.turns.get(request_id, [])
        last = "ttsNotRequested" if self.dialect == "snake" else "fullProcessComplete"
        return bool(events) and kind_of(events[-1], self.dialect) == last

    async def events(self, request_id: str, timeout: float = DEFAULT_TIMEOUT_S) -> list[Frame]:
        """Every event of a turn, up to and including its last."""
        async with asyncio.timeout(timeout):
            while not self.finished(request_id):
                await self.pump()
        return self.turns[request_id]

    async def turn(self, request_id: str, timeout: float = DEFAULT_TIMEOUT_S) -> TurnSummary:
        """Collect a turn and check every invariant on it."""
        return check_turn(await self.events(request_id, timeout), self.dialect)

    async def wait_for(self, request_id: str, kind: str, timeout: float = DEFAULT_TIMEOUT_S) -> Frame:
        """Pump until the turn has an event of ``kind`` (camel name); return it."""
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.turns.get(request_id, []):
                    if kind_of(frame, self.dialect) == kind:
                        return frame
                await self.pump()

    async def next_other(self, timeout: float = DEFAULT_TIMEOUT_S) -> Frame:
        """The next frame that belongs to no turn (pong, closing, frame errors)."""
        async with asyncio.timeout(timeout):
            while not self.other:
                await self.pump()
        return self.other.pop(0)
