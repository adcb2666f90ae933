"""A lean WebSocket client for the load generator: websockets' sans-I/O ``ClientProtocol`` under asyncio.

websockets does the handshake, the masking, ping → pong and the closing handshake; frames are handed to a
sink synchronously from ``data_received`` with the arrival time of the read that brought them. That costs
about a third of websockets' asyncio client per frame (no future, no queue, no task switch per message),
which matters: the floor sends frames about as fast as a Python client can read them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

Payload = bytes | bytearray | memoryview
FrameSink = Callable[[Payload, float], None]
CLOSE_TIMEOUT_S = 2.0


def _nothing() -> None:
    return None


class WsClient(asyncio.Protocol):
    """One connection. ``sink(data, now)`` gets every text message; ``on_close()`` runs once at the end."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.ws = ClientProtocol(parse_uri(url), max_size=None)
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[Payload] = loop.create_future()
        self.sink: FrameSink = self._first_message
        self.on_close: Callable[[], None] = _nothing
        self._fragments: list[Payload] = []
        self._abort_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._frame(event, now)
            else:
                self._handshake_done()
        self._flush()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.opened, self.ready):
            if not future.done():
                future.set_exception(ConnectionError(f"connection lost while opening: {exc!r}"))
                future.exception()  # whoever awaits it still gets it; nobody else warns about it
        if not self.closed.done():
            self.closed.set_result(None)
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        self.on_close()

    # -- sending, closing --------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.ws.state is State.OPEN and not self.closed.done()

    def send_text(self, text: bytes) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_text(text)
            self._flush()

    def close(self) -> None:
        """Start the closing handshake; the transport is aborted if the server does not finish it."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            self._flush()
        self._abort_later()

    def abort(self) -> None:
        if self.transport is not None and not self.closed.done():
            self.transport.abort()

    def pause_reading(self) -> None:
        """Stop reading: what the server sends now piles up in the kernel's buffers, then in the server's."""
        if self.transport is not None:
            self.transport.pause_reading()

    # -- internals ---------------------------------------------------------------------------------

    def _first_message(self, data: Payload, now: float) -> None:
        if not self.ready.done():
            self.ready.set_result(data)

    def _frame(self, frame: Frame, now: float) -> None:
        if frame.opcode is Opcode.TEXT:
            if frame.fin:
                self.sink(frame.data, now)
            else:
                self._fragments = [frame.data]
        elif frame.opcode is Opcode.CONT and self._fragments:
            self._fragments.append(frame.data)
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                self.sink(data, now)
        # ping (answered by the protocol), pong, close (answered by the protocol) and binary: nothing to do

    def _handshake_done(self) -> None:
        if self.opened.done():
            return
        if self.ws.handshake_exc is not None:
            self.opened.set_exception(self.ws.handshake_exc)
        else:
            self.opened.set_result(None)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()
        if self.ws.close_expected():
            self._abort_later()

    def _abort_later(self) -> None:
        if self._abort_timer is None and not self.closed.done():
            self._abort_timer = self.loop.call_later(CLOSE_TIMEOUT_S, self.abort)


async def open_client(url: str, timeout_s: float) -> WsClient:
    """Connect, finish the handshake and read the server's first message (``websocketReady``)."""
    loop = asyncio.get_running_loop()
    uri = parse_uri(url)
    async with asyncio.timeout(timeout_s):
        _, client = await loop.create_connection(lambda: WsClient(url, loop), uri.host, uri.port)
        await client.opened
        await client.ready
    return client
