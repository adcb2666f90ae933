"""The WebSocket loop: read frames while a turn streams, queue requests, handle control frames at once.

No business logic here: a chat request becomes a ``Turn``; the turn's events go through the ``Outbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError
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
IDLE_CHECK_MAX_S = 5.0


def idle_check_interval(idle_timeout_s: float) -> float:
    """How often the idle sweep looks: a quarter of the timeout, at most every 5 s (so an idle client is
    closed within 1–1.25 timeouts, or the timeout plus 5 s)."""
    return min(idle_timeout_s / 4, IDLE_CHECK_MAX_S)


class Outbox:
    """Encoded events on their way to the socket.

    Frames pushed during one turn of the event loop go out together at its next turn, in one socket
    write, from a callback: no task step and no future per frame, which at 100 unpaced streams was a
    second task wake-up for every delta. Only when the socket's buffer is full (or the server is not
    uvicorn's sans-I/O protocol, see ``DirectSend``) does a writer task wait for it; it ends when the
    queue is empty. An idle connection holds no task, no callback and no event objects, only this queue.

    Above the high-water mark a turn waits (``congested``); a client that stays stalled past the timeout,
    or lets the buffer pass its limit, is dropped (``on_detach``). Its turn carries on: a disconnect is a
    detach, and what the turn sends after it is dropped before it is queued.
    """

    __slots__ = (
        "_direct",
        "_drained",
        "_flushed",
        "_high",
        "_limit",
        "_loop",
        "_on_detach",
        "_queue",
        "_scheduled",
        "_send",
        "_size",
        "_stall_timeout",
        "_writer",
        "congested",
        "detached",
    )

    def __init__(
        self,
        websocket: WebSocket,
        limit_bytes: int,
        stall_timeout_s: float,
        on_detach: Callable[[], object] | None = None,
    ) -> None:
        self._send = websocket.send
        self._direct = DirectSend.of(websocket)
        self._loop = asyncio.get_running_loop()
        self._limit = limit_bytes
        self._high = min(HIGH_WATER_BYTES, limit_bytes // 2)
        self._stall_timeout = stall_timeout_s
        self._on_detach = on_detach
        self._queue: list[str] = []
        self._size = 0
        self._scheduled = False  # a ``_write_soon`` callback is on the loop
        self._writer: asyncio.Task[None] | None = None  # only while waiting for the socket
        self._flushed: asyncio.Future[None] | None = (
            None  # made by ``flush``, kept by whoever empties the queue
        )
        self._drained: asyncio.Future[None] | None = None  # made by a turn that waits for the client
        self.congested = False
        self.detached = False

    def push(self, data: str) -> None:
        if self.detached:
            return
        self._queue.append(data)
        self._size += len(data)
        if self._size > self._high:
            self.congested = True
            if self._size > self._limit:
                self.detach("client too slow: send buffer full")
                return
        if not self._scheduled and self._writer is None:  # a running writer takes it with the rest
            self._scheduled = True
            self._loop.call_soon(self._write_soon)

    def push_now(self, data: str) -> None:
        """Push, and write the queue to the socket now rather than at the loop's next turn.

        For the frames a user waits on (``working``, the first ``text``, ``cancelled``): under load the
        next turn of a busy event loop is a millisecond or more away. Only where nothing can overtake:
        the direct path, a socket that takes bytes, and no writer with a batch on its way.
        """
        direct = self._direct
        if (
            direct is None
            or self._writer is not None
            or self.congested
            or self.detached
            or not direct.ready()
        ):
            self.push(data)
            return
        self._queue.append(data)
        self._size += len(data)
        self._write_now(direct)

    async def wait_ready(self) -> None:
        """Wait for the client to catch up; give up on it after the stall timeout."""
        if not self.congested:
            return
        if self._drained is None:
            self._drained = self._loop.create_future()
        try:
            async with asyncio.timeout(self._stall_timeout):
                await asyncio.shield(self._drained)
        except TimeoutError:
            self.detach("client too slow: stalled")

    def detach(self, why: str, abort: bool = True) -> None:
        """Stop sending: drop what is queued, release a waiting turn, and (``abort``) drop the client."""
        if self.detached:
            return
        self.detached = True
        if why:
            log.info("detaching connection: %s", why)
        self._queue.clear()
        self._size = 0
        self._release()
        self._settle_flush()  # nothing more will be sent: nobody waits in vain
        if self._writer is not None:
            self._writer.cancel()  # safe: it is either between frames or waiting for the socket
        if abort and self._on_detach is not None:
            self._on_detach()

    async def flush(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until everything queued has been handed to the socket."""
        if self.detached or (not self._queue and self._writer is None):
            return
        if self._flushed is None:
            self._flushed = self._loop.create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._flushed)

    async def close(self) -> None:
        writer = self._writer
        self.detach("", abort=False)
        if writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def _write_soon(self) -> None:
        """What the loop's last turn pushed, in one write; a writer task if the socket cannot take it."""
        self._scheduled = False
        if self.detached or self._writer is not None or not self._queue:
            return
        direct = self._direct
        if direct is not None and direct.ready():
            self._write_now(direct)
        else:
            self._writer = self._loop.create_task(self._write_loop(), name="parley-outbox")

    def _write_now(self, direct: DirectSend) -> None:
        batch, self._queue = self._queue, []
        self._size = 0
        try:
            direct.write(batch)
        except Exception as exc:  # the socket went away under us: a detach, not an error
            log.debug("send failed: %r", exc)
            self.detach("send failed")
            return
        if self.congested:
            self._release()
        self._settle_flush()

    def _release(self) -> None:
        self.congested = False
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    def _settle_flush(self) -> None:
        if self._flushed is not None:
            if not self._flushed.done():
                self._flushed.set_result(None)
            self._flushed = None

    async def _write_loop(self) -> None:
        try:
            while self._queue:
                await self._send_batch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away under us: a detach, not an error
            log.debug("send failed: %r", exc)
            self.detach("send failed")
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
            if not self._queue:
                self._settle_flush()

    async def _send_batch(self) -> None:
        batch, self._queue = self._queue, []
        if self._direct is not None:
            await self._direct.send_all(batch)
            self._size -= sum(map(len, batch))
        else:
            for data in batch:
                await self._send({"type": "websocket.send", "text": data})
                self._size -= len(data)
        if self.congested and self._size <= self._high // 2:
            self._release()


class DirectSend:
    """Frames straight into uvicorn's websockets (sans-I/O) protocol: every queued frame in one socket write.

    Through ASGI each frame passes Starlette's ``WebSocket.send``, two exception-handler wrappers and
    uvicorn's ``send``, then is written alone. The profile of unpaced streams had that path as the largest
    per-frame cost after the socket write itself. Here the frames go to the same ``websockets`` protocol
    object uvicorn uses, honouring its flow control (``writable``) and closing state, and the bytes of a
    whole batch go out in one ``transport.write``.

    This reaches into uvicorn's protocol object (as ``abort_transport`` does). ``of`` checks for every
    attribute it uses and returns None when any is missing (another server, another uvicorn), and the
    outbox then sends through ASGI; ``tests/test_frames.py`` fails if the direct path stops being used.
    """

    __slots__ = ("_proto",)

    def __init__(self, proto: Any) -> None:
        self._proto = proto

    @classmethod
    def of(cls, websocket: WebSocket) -> DirectSend | None:
        proto = getattr(getattr(websocket, "_receive", None), "__self__", None)
        conn = getattr(proto, "conn", None)
        usable = (
            callable(getattr(conn, "send_text", None))
            and callable(getattr(conn, "data_to_send", None))
            and callable(getattr(getattr(proto, "transport", None), "write", None))
            and isinstance(getattr(proto, "writable", None), asyncio.Event)
            and isinstance(getattr(proto, "close_sent", None), bool)
            and isinstance(getattr(proto, "disconnected", None), bool)
        )
        return cls(proto) if usable else None

    def ready(self) -> bool:
        """The socket takes bytes now (its buffer is not full) and the WebSocket is open."""
        proto = self._proto
        return proto.writable.is_set() and not (proto.disconnected or proto.close_sent)

    async def send_all(self, frames: list[str]) -> None:
        proto = self._proto
        if not proto.writable.is_set():
            await proto.writable.wait()  # the kernel buffer is full: wait as uvicorn's send would
        self.write(frames)

    def write(self, frames: list[str]) -> None:
        proto = self._proto
        if proto.disconnected or proto.close_sent:
            raise ConnectionError("the WebSocket is closed")
        conn = proto.conn
        for frame in frames:
            conn.send_text(frame.encode())
        proto.transport.write(b"".join(conn.data_to_send()))


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

    __slots__ = (
        "_last_active",
        "_reader",
        "_worker",
        "closing",
        "current",
        "dialect",
        "id",
        "identity",
        "outbox",
        "services",
        "supervisor",
        "waiting",
        "ws",
    )

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
        self.outbox = Outbox(websocket, settings.send_buffer_bytes, settings.send_stall_timeout_s, self._drop)
        self.waiting: list[Turn] = []
        self.current: Turn | None = None
        self._worker: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._last_active = asyncio.get_running_loop().time()
        self.closing = False

    async def serve(self) -> None:
        """Run until the client leaves, asks to close, idles out or is too slow. Turns outlive this."""
        self.send(ready_frame(self.dialect, self.id))
        self.supervisor.outboxes.add(self.outbox)
        self.supervisor.watch_idle(self, idle_check_interval(self.services.settings.idle_timeout_s))
        self._reader = asyncio.current_task()
        try:
            while not self.closing:
                message = await self.ws.receive()
                self._last_active = asyncio.get_running_loop().time()
                if message["type"] == "websocket.disconnect":
                    return
                if self.closing:
                    continue  # closing: the client's close answer (a disconnect) is all we wait for
                if message.get("text") is None:
                    self.send(frame_error("invalid_json", "Frames must be JSON text, not binary."))
                elif not await self._on_text(message["text"]):
                    return
        except asyncio.CancelledError:
            if self.outbox.detached and self._reader is not None and self._reader.uncancel() == 0:
                return  # ``_drop`` stopped the reader: the client is gone
            raise
        finally:
            self._reader = None
            self.supervisor.idlers.discard(self)
            self.supervisor.outboxes.discard(self.outbox)
            await self.outbox.close()

    def send(self, frame: dict[str, Any]) -> None:
        self.outbox.push(encode(frame))

    def idle_expired(self, now: float) -> bool:
        """Idle: no frames from the client and no turn running or waiting, for the whole timeout."""
        if self.current is not None or self.waiting or self.closing:
            return False
        return now - self._last_active >= self.services.settings.idle_timeout_s

    def expire(self) -> None:
        """Close an idle connection (from the idle sweep): ``closing``, then 1001."""
        self.closing = True
        self.supervisor.spawn(self._close(CLOSE_GOING_AWAY, "timeout"), name=f"parley-idle-{self.id}")

    def _drop(self) -> None:
        """The outbox gave up on a too-slow client: drop the connection now, with what it never read
        (the reader then sees the disconnect); where the server allows no abort, stop the reader."""
        if not abort_transport(self.ws) and self._reader is not None:
            self._reader.cancel()

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
            self.closing = True
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
            turn = self.current = self.waiting.pop(0)
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
