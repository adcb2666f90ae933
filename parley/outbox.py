"""The outbox: a connection's encoded frames on their way to its socket, with a bound on what a client that
does not read may cost (``PARLEY_SEND_BUFFER_BYTES``, ``PARLEY_SEND_STALL_TIMEOUT_S``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from starlette.websockets import WebSocket

from parley.uvicorn_ws import DirectSend

log = logging.getLogger("parley.connection")

HIGH_WATER_BYTES = 256 * 1024


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
