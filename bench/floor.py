"""The floor: the same ASGI server as Parley (uvicorn, same options) with a bare Starlette WebSocket route.

It answers a chat request with the events Parley sends for it — ``working``, N ``text`` deltas,
``dbOperationExecuted``, ``fullProcessComplete`` — of the same sizes, encoded once per answer shape (only the
client's ``request_id`` is spliced in), with no auth, no validation, no database and no provider. A ``cancel``
stops the deltas and sends ``cancelled``, ``dbOperationExecuted``, ``fullProcessComplete`` as Parley does.
``delay_ms`` paces the deltas the way the demo model does: a sleep before each delta (of zero seconds when
unpaced, which still lets the other connections run).

    python -m bench.floor --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bench.frames import FILLER, encode
from bench.metrics import raise_nofile_limit
from parley.providers.demo import approx_tokens as word_count
from parley.providers.demo import split_answer

MARK = "@@request_id@@"
SESSION_ID = str(uuid.UUID(int=0x5EED))
USER_MESSAGE_ID = str(uuid.UUID(int=0x1))
AI_MESSAGE_ID = str(uuid.UUID(int=0x2))
CACHE_LIMIT = 64
MAX_FRAME_BYTES = 1024 * 1024  # Parley's default PARLEY_MAX_FRAME_BYTES
PING_INTERVAL_S = 20.0  # Parley's ws_ping_interval_s


@dataclass(frozen=True, slots=True)
class Template:
    """One encoded event with a hole for the JSON-encoded request_id."""

    head: str
    tail: str

    @classmethod
    def of(cls, frame: dict[str, Any]) -> Template:
        head, tail = encode({**frame, "request_id": MARK}).split(f'"{MARK}"')
        return cls(head, tail)

    def render(self, request_id_json: str) -> str:
        return self.head + request_id_json + self.tail


@dataclass(frozen=True)
class TurnTemplates:
    """Every event of a completed turn of one shape (answer text, number of deltas, prompt size)."""

    working: Template
    deltas: list[Template]
    db_completed: Template
    complete: Template
    input_tokens: int


def turn_event(kind: str, seq: int, **fields: Any) -> dict[str, Any]:
    """A turn event laid out as Parley's emitter lays it out: type, payload, request_id, seq, session_id."""
    return {"type": kind, **fields, "request_id": MARK, "seq": seq, "session_id": SESSION_ID}


def db_event(seq: int, status: str, usage: dict[str, int]) -> dict[str, Any]:
    content = {
        "session_id": SESSION_ID,
        "user_message_id": USER_MESSAGE_ID,
        "ai_message_id": AI_MESSAGE_ID,
        "status": status,
        "usage": usage,
    }
    return turn_event("dbOperationExecuted", seq, content=encode(content))


def build_turn(text: str, chunks: int, input_tokens: int, model: str) -> TurnTemplates:
    pieces = split_answer(text, chunks)
    working = {"type": "working", "content": {"request_type": "text", "model": model, "provider": "demo"}}
    last = len(pieces)
    usage = {"input_tokens": input_tokens, "output_tokens": last}
    return TurnTemplates(
        working=Template.of({**working, "request_id": MARK, "seq": 0}),
        deltas=[Template.of(turn_event("text", i + 1, content=p)) for i, p in enumerate(pieces)],
        db_completed=Template.of(db_event(last + 1, "completed", usage)),
        complete=Template.of(turn_event("fullProcessComplete", last + 2, status="completed")),
        input_tokens=input_tokens,
    )


class TurnCache:
    """Encoded turns by shape; a bench uses a handful of shapes, so the cache stays small."""

    def __init__(self) -> None:
        self._turns: dict[tuple[str, int, int, str], TurnTemplates] = {}

    def get(self, text: str, chunks: int, input_tokens: int, model: str) -> TurnTemplates:
        key = (text, chunks, input_tokens, model)
        found = self._turns.get(key)
        if found is None:
            if len(self._turns) >= CACHE_LIMIT:
                self._turns.clear()
            found = self._turns[key] = build_turn(text, chunks, input_tokens, model)
        return found


@dataclass(frozen=True)
class Ask:
    """What the floor reads from a chat request: just enough to pick the encoded turn and the pace."""

    request_id: str
    text: str
    chunks: int
    delay_s: float
    input_tokens: int
    model: str

    @classmethod
    def of(cls, frame: dict[str, Any]) -> Ask:
        settings = (frame.get("user_settings") or {}).get("text") or {}
        options = settings.get("options") or {}
        text = options.get("text") or FILLER
        prompt = (frame.get("user_input") or {}).get("prompt") or ""
        return cls(
            request_id=str(frame.get("request_id") or uuid.uuid4().hex),
            text=text,
            chunks=int(options.get("chunks") or word_count(text)),
            delay_s=float(options.get("delay_ms") or 0) / 1000,
            input_tokens=word_count(prompt if isinstance(prompt, str) else ""),
            model=str(settings.get("model") or "demo"),
        )


class FloorConnection:
    """One socket: a reader that handles cancel and ping at once, and a worker that streams turns in order."""

    def __init__(self, ws: WebSocket, cache: TurnCache) -> None:
        self.ws = ws
        self.cache = cache
        self.pending: asyncio.Queue[Ask] = asyncio.Queue()
        self.sent = 0
        self.stream: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        ready = {"type": "websocketReady", "content": "Backend ready", "connection_id": uuid.uuid4().hex}
        await self.ws.send_text(encode(ready))
        worker = asyncio.create_task(self.work())
        try:
            await self.read()
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                frame = orjson.loads(message.get("text") or "")
            except orjson.JSONDecodeError:
                continue
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "cancel":
                if self.stream is not None and not self.stream.done():
                    self.stream.cancel()
            elif kind == "ping":
                await self.ws.send_text(encode({"type": "pong", "timestamp": "1970-01-01T00:00:00.000000Z"}))
            elif isinstance(frame, dict):
                self.pending.put_nowait(Ask.of(frame))

    async def work(self) -> None:
        try:
            while True:
                await self.turn(await self.pending.get())
        except Exception:  # the client went away mid-turn: nothing to finish, nothing to store
            return

    async def turn(self, ask: Ask) -> None:
        turn = self.cache.get(ask.text, ask.chunks, ask.input_tokens, ask.model)
        rid = encode(ask.request_id)
        send = self.ws.send_text
        await send(turn.working.render(rid))
        self.sent = 0
        self.stream = asyncio.create_task(self.deltas(turn, rid, ask.delay_s))
        await asyncio.wait({self.stream})
        if self.stream.cancelled():
            await self.cancelled(ask, turn, rid)
            return
        self.stream.result()
        await send(turn.db_completed.render(rid))
        await send(turn.complete.render(rid))

    async def deltas(self, turn: TurnTemplates, rid: str, delay_s: float) -> None:
        send = self.ws.send_text
        for template in turn.deltas:
            await asyncio.sleep(delay_s)
            await send(template.render(rid))
            self.sent += 1

    async def cancelled(self, ask: Ask, turn: TurnTemplates, rid: str) -> None:
        """The rare path, encoded on the spot."""
        seq = self.sent + 1
        usage = {"input_tokens": turn.input_tokens}
        events = [
            turn_event("cancelled", seq, content="Request cancelled"),
            db_event(seq + 1, "cancelled", usage),
            turn_event("fullProcessComplete", seq + 2, status="cancelled"),
        ]
        for event in events:
            await self.ws.send_text(Template.of(event).render(rid))


def create_app() -> Starlette:
    cache = TurnCache()

    async def chat_ws(ws: WebSocket) -> None:
        await ws.accept()
        await FloorConnection(ws, cache).serve()

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[WebSocketRoute("/chat/ws", chat_ws), Route("/healthz", healthz)])


def server_config(host: str, port: int) -> uvicorn.Config:
    """uvicorn as ``parley.server.ParleyServer`` configures it (auto loop, HTTP and WebSocket protocols)."""
    return uvicorn.Config(
        create_app(),
        host=host,
        port=port,
        ws_max_size=MAX_FRAME_BYTES,
        ws_per_message_deflate=False,
        ws_ping_interval=PING_INTERVAL_S,
        ws_ping_timeout=PING_INTERVAL_S,
        log_level="warning",
        lifespan="on",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    uvicorn.Server(server_config(args.host, args.port)).run()


if __name__ == "__main__":
    main()
