"""The WebSocket loop: read frames while a turn streams, queue requests, handle control frames at once.

No business logic here: a chat request becomes a ``Turn``; the turn's events go through the ``Outbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.types import Message
from starlette.websockets import WebSocket

from parley.auth import Identity
from parley.config import Dialect
from parley.errors import LimitExceeded, ShuttingDown
from parley.protocol import (
    CancelFrame,
    ControlType,
    closing_frame,
    describe_validation_error,
    encode,
    frame_error,
    pong_frame,
    ready_frame,
)
from parley.tasks import Supervisor
from parley.turn import Turn, TurnServices

log = logging.getLogger("parley.connection")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
HIGH_WATER_BYTES = 256 * 1024
CLOSE_FLUSH_TIMEOUT_S = 2.0


class Outbox:
    """Encoded events waiting for the socket, drained by one writer task.

    Above the high-water mark a turn waits (``congested``); a client that stays stalled past the timeout,
    or lets the buffer pass its limit, is disconnected. Its turn carries on: a disconnect is a detach.
    """

    def __init__(self, websocket: WebSocket, limit_bytes: int, stall_timeout_s: float) -> None:
        self._ws = websocket
        self._limit = limit_bytes
        self._high = min(HIGH_WATER_BYTES, limit_bytes // 2)
        self._stall_timeout = stall_timeout_s
        self._queue: deque[str] = deque()
        self._size = 0
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.congested = False
        self.detached = False
        self._detached = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="parley-outbox")

    def push(self, data: str) -> None:
        if self.detached:
            return
        self._queue.append(data)
        self._size += len(data)
        self._idle.clear()
        if self._size > self._high and not self.congested:
            self.congested = True
            self._drained.clear()
        if self._size > self._limit:
            self.detach("client too slow: send buffer full")
        self._wakeup.set()

    async def wait_ready(self) -> None:
        """Wait for the client to catch up; give up on it after the stall timeout."""
        try:
            await asyncio.wait_for(self._drained.wait(), self._stall_timeout)
        except TimeoutError:
            self.detach("client too slow: stalled")

    def detach(self, why: str) -> None:
        """Stop sending: drop what is queued and release any waiting turn; the reader closes the socket."""
        if self.detached:
            return
        self.detached = True
        self._detached.set()
        if why:
            log.info("detaching connection: %s", why)
        self._queue.clear()
        self._size = 0
        self.congested = False
        self._drained.set()
        self._idle.set()
        self._writer.cancel()  # safe: it is either idle or waiting for the socket to take a frame

    async def wait_detached(self) -> None:
        await self._detached.wait()

    async def flush(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def close(self) -> None:
        self.detach("")
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def _write_loop(self) -> None:
        send = self._ws.send
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    data = self._queue.popleft()
                    self._size -= len(data)
                    await send({"type": "websocket.send", "text": data})
                    if self.congested and self._size <= self._high // 2:
                        self.congested = False
                        self._drained.set()
                self._idle.set()
        except Exception as exc:  # the socket went away under us: a detach, not an error
            log.debug("send failed: %r", exc)
            self.detach("send failed")


def abort_transport(websocket: WebSocket) -> bool:
    """Drop the connection at once, unsent bytes and all. True if the server let us.

    ASGI has no "abort": a close frame would queue behind the data a stalled peer never reads, and the
    server's socket would linger with its buffer. uvicorn's ``receive`` is a method of its protocol
    object, which owns the transport; use that where it is there, and otherwise leave the close to the server.
    """
    owner = getattr(getattr(websocket, "_receive", None), "__self__", None)
    transport = getattr(owner, "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return False
    transport.abort()
    return True


class Connection:
    """One client socket: its reader loop, its queue of turns, and the worker that runs them in order."""

    def __init__(
        self,
        websocket: WebSocket,
        identity: Identity,
        services: TurnServices,
        supervisor: Supervisor,
        dialect: Dialect,
    ) -> None:
        self.ws = websocket
        self.identity = identity
        self.services = services
        self.supervisor = supervisor
        self.dialect = dialect
        self.id = uuid.uuid4().hex
        settings = services.settings
        self.outbox = Outbox(websocket, settings.send_buffer_bytes, settings.send_stall_timeout_s)
        self.waiting: deque[Turn] = deque()
        self.current: Turn | None = None
        self._worker: asyncio.Task[None] | None = None
        self._last_active = asyncio.get_running_loop().time()

    async def serve(self) -> None:
        """Run until the client leaves, asks to close, idles out or is too slow. Turns outlive this."""
        self.send(ready_frame(self.dialect, self.id))
        self.supervisor.outboxes.add(self.outbox)
        try:
            await self._read_loop()
        finally:
            self.supervisor.outboxes.discard(self.outbox)
            await self.outbox.close()

    def send(self, frame: dict[str, Any]) -> None:
        self.outbox.push(encode(frame))

    async def _read_loop(self) -> None:
        gone = asyncio.create_task(self.outbox.wait_detached())
        receive: asyncio.Task[Message] | None = None
        try:
            while True:
                receive = receive or asyncio.create_task(self.ws.receive())
                done, _ = await asyncio.wait(
                    {receive, gone}, timeout=self._idle_left(), return_when="FIRST_COMPLETED"
                )
                if gone in done:
                    abort_transport(self.ws)  # too slow: drop it now, with what it never read
                    return
                if receive not in done:
                    if self._idle_left() <= 0:
                        await self._close(CLOSE_GOING_AWAY, "timeout")
                        return
                    continue
                message, receive = receive.result(), None
                self._last_active = asyncio.get_running_loop().time()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is None:
                    self.send(frame_error("invalid_json", "Frames must be JSON text, not binary."))
                elif not await self._on_text(message["text"]):
                    return
        finally:
            gone.cancel()
            if receive is not None:
                receive.cancel()

    def _idle_left(self) -> float:
        """Seconds until the connection counts as idle: no frames and no turn for the whole timeout."""
        timeout = self.services.settings.idle_timeout_s
        if self.current is not None or self.waiting:
            return timeout
        return timeout - (asyncio.get_running_loop().time() - self._last_active)

    async def _on_text(self, text: str) -> bool:
        """Handle one text frame; False when the connection should end."""
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.send(frame_error("invalid_json", "The frame is not valid JSON."))
            return True
        if not isinstance(frame, dict):
            self.send(frame_error("invalid_json", "A frame must be a JSON object."))
            return True
        kind = frame.get("type")
        if kind == ControlType.PING:
            self.send(pong_frame())
        elif kind == ControlType.CANCEL:
            self._on_cancel(frame)
        elif kind == ControlType.RESUME:
            rid = frame.get("request_id")
            error = frame_error(
                "stream_expired", "That turn cannot be resumed here; read the session over REST."
            )
            self.send({**error, "request_id": rid} if isinstance(rid, str) else error)
        elif kind == ControlType.CLOSE_SESSION:
            await self._close(CLOSE_NORMAL, "client_request")
            return False
        else:
            self._submit(Turn(frame, self.identity, self.services, self.dialect, self.outbox))
        return True

    def _on_cancel(self, frame: dict[str, Any]) -> None:
        try:
            cancel = CancelFrame.model_validate(frame)
        except ValidationError as exc:
            self.send(
                frame_error("invalid_request", f"Invalid cancel frame: {describe_validation_error(exc)}")
            )
            return
        if cancel.request_id is None:
            if self.current is not None:
                self.current.cancel()
            return
        for turn in (self.current, *self.waiting):
            if turn is not None and turn.request_id == cancel.request_id:
                turn.cancel()
                return
        # No such turn: it raced with completion. Ignored, as the protocol says.

    def _submit(self, turn: Turn) -> None:
        in_flight = len(self.waiting) + (self.current is not None)
        if not self.supervisor.accepting:
            turn.refuse(ShuttingDown("The server is shutting down; send this again to another server."))
        elif in_flight > self.services.settings.max_queued_requests:
            limit = self.services.settings.max_queued_requests
            turn.refuse(LimitExceeded(f"Too many requests: at most {limit} may wait behind the running one."))
        else:
            self.waiting.append(turn)
            if self._worker is None or self._worker.done():
                self._worker = self.supervisor.spawn(self._work(), name=f"parley-conn-{self.id}")

    async def _work(self) -> None:
        """Run waiting turns in order. Owned by the supervisor, so turns finish after a disconnect."""
        while self.waiting:
            turn = self.current = self.waiting.popleft()
            if not self.supervisor.accepting:
                turn.refuse(ShuttingDown("The server is shutting down; send this again to another server."))
                continue
            self.supervisor.running.add(turn)
            try:
                await turn.run()
            finally:
                self.supervisor.running.discard(turn)
                self.current = None
                self._last_active = asyncio.get_running_loop().time()

    async def _close(self, code: int, reason: str) -> None:
        self.send(closing_frame(reason))
        await self.outbox.flush(CLOSE_FLUSH_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), CLOSE_FLUSH_TIMEOUT_S)
