"""Reaching into uvicorn's protocol objects: the one file that touches uvicorn's private attributes.

Two things ASGI cannot do fast enough or at all: write a batch of frames in one socket write
(``DirectSend``), and drop a connection at once with its unsent bytes (``abort_transport``). Both find
uvicorn's protocol object behind ``WebSocket._receive`` and check every attribute they use; where one is
missing (another server, another uvicorn) they decline and the caller falls back to ASGI.

And the edge of the server, before the app sees a request (``edge_protocols``, subclasses of uvicorn's
httptools and websockets protocols that ``ParleyServer`` configures): a request head may be up to
``MAX_HEAD_BYTES`` (identity providers' tokens pass 8 KiB) and must arrive within the handshake timeout;
a larger one is answered 414/431 and a late one 408, each then closed. A refusal websockets makes of an
upgrade is written (uvicorn leaves it unsent, the connection open); a denied upgrade is not an error; a
text frame that is not UTF-8 closes the socket with 1007 and an INFO line, not an ERROR with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

import orjson
from starlette.websockets import WebSocket
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets import http11
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders

from parley.errors import http_status

log = logging.getLogger("parley.server")

# The longest request head (request line and headers together) the server reads. Identity providers' tokens
# reach 10-20 KB, in ``?token=`` or ``Authorization``; websockets alone stops at 8 KiB a line.
MAX_HEAD_BYTES = 64 * 1024
# After a refusal the client may still be sending its head: read and drop it this long before closing, so
# the close does not reset the connection before the client has read the answer.
LINGER_S = 2.0


def _protocol(websocket: WebSocket) -> Any:
    """uvicorn's protocol object: ``receive`` is one of its methods."""
    return getattr(getattr(websocket, "_receive", None), "__self__", None)


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
        proto = _protocol(websocket)
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
    transport = getattr(_protocol(websocket), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return False
    transport.abort()
    return True


# -- the edge: request heads and handshakes --------------------------------------------------------------


def edge_protocols(handshake_timeout_s: float) -> dict[str, Any]:
    """uvicorn's ``http`` and ``ws`` settings for Parley: its protocols with the guards described above."""
    # websockets reads the upgrade's head again, line by line; the HTTP protocol has bounded it already.
    http11.MAX_LINE_LENGTH = max(http11.MAX_LINE_LENGTH, MAX_HEAD_BYTES)
    http = type("ParleyHttpProtocol", (GuardedHttpProtocol,), {"head_timeout_s": handshake_timeout_s})
    return {"http": http, "ws": GuardedWebSocketProtocol}


def error_response(code: str, detail: str) -> bytes:
    """A complete HTTP/1.1 response with Parley's error body (its status the catalogue's for ``code``), for
    a connection about to close."""
    status = HTTPStatus(http_status(code))
    body = orjson.dumps({"detail": detail, "code": code})
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def head_too_large(request_line: bool) -> bytes:
    """The answer to a head past the limit: 414 when the request line alone passed it, else 431."""
    limit = f"{MAX_HEAD_BYTES // 1024} KiB"
    if request_line:
        detail = f"The request line must not pass {limit}."
        return error_response("request_line_too_long", detail)
    detail = f"The request head must not pass {limit} (an upgrade: nor {http11.MAX_NUM_HEADERS} headers)."
    return error_response("headers_too_large", detail)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a size limit and a deadline on every request head.

    uvicorn arms no timer before a connection's first request and buffers a head of any size: a client that
    sends half a head (or a 1 GB header) holds its connection, and its memory, for ever.
    """

    head_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = None  # received of the head being read; None: no head expected
        self._in_request_line = True
        self._head_begun = False  # a byte of it came (httptools began a message)
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_complete()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: dropped unread
        if self._head_bytes is not None:
            self._head_bytes += len(data)
            self._in_request_line = self._in_request_line and b"\n" not in data
        super().data_received(data)
        # A head still incomplete: what it holds so far is bounded too (httptools buffers a header whole).
        too_large = self._head_bytes is not None and self._head_bytes > MAX_HEAD_BYTES
        if too_large and not self.transport.is_closing():
            self._refuse(request_line=self._in_request_line)

    # httptools' callbacks: a request begins (after the first, on a kept-alive connection), its head ends.
    # After a refusal the rest of the bytes already fed are parsed still, and ignored.
    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        if self._head_bytes is None:
            self._expect_head()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._head_complete()
        # A whole head in one read: its size is that of its parts.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEAD_BYTES:
            self._refuse(request_line=len(self.url) > MAX_HEAD_BYTES)
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if not self._refused:
            super().handle_websocket_upgrade()

    def _expect_head(self) -> None:
        self._head_bytes, self._in_request_line, self._head_begun = 0, True, False
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _head_complete(self) -> None:
        self._head_bytes = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _responding(self) -> bool:
        """A response to an earlier (pipelined) request is still being written."""
        return self.cycle is not None and not self.cycle.response_complete

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._responding():
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
            return
        log.info("closed a connection whose request head did not arrive within %s s", self.head_timeout_s)
        if self._head_begun:
            detail = f"The request head did not arrive within {self.head_timeout_s:g} s."
            self.transport.write(error_response("request_timeout", detail))
        self._head_complete()
        self.transport.close()

    def _refuse(self, request_line: bool) -> None:
        """Answer 414 or 431, then close once the client has had time to read it."""
        self._head_complete()
        self._refused = True
        log.info("refused a request whose head passed %d bytes", MAX_HEAD_BYTES)
        if self._responding():
            self.transport.close()
            return
        self.transport.write(head_too_large(request_line))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol, with three of its answers mended."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None and not self.close_sent:
            self._refuse_head(self.conn.handshake_exc)  # uvicorn < 0.55, which left it unanswered

    def handle_handshake_exception(self) -> None:
        """uvicorn ≥ 0.55 answers a refused head itself, in websockets' plain text: ours instead."""
        assert self.conn.handshake_exc is not None
        self._refuse_head(self.conn.handshake_exc)

    def _refuse_head(self, exc: Exception) -> None:
        """websockets refused the upgrade's head (over 128 headers, or a line past its limit) and queued its
        answer, which uvicorn never writes: the client waited for ever. Answer as the HTTP protocol does."""
        self.conn.data_to_send()  # websockets' own plain-text answer, replaced by ours
        self.handshake_complete = self.close_sent = True
        if isinstance(exc, RequestLineTooLong | HeaderLineTooLong | TooManyHeaders):
            self.transport.write(head_too_large(isinstance(exc, RequestLineTooLong)))
        log.info("refused a WebSocket upgrade: %s", exc)
        self.transport.close()

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and self.close_sent:
            # A denial (401 before the upgrade) is a complete answer; uvicorn, still waiting for the handshake
            # to "complete", would log an ERROR for every refused client.
            self.handshake_complete = True

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent and not _utf8(self.frames):
            # RFC 6455 section 8.1: fail the connection with 1007. uvicorn does too, with an ERROR and a
            # traceback for something any client can send.
            self.frames = []
            log.info("closed a WebSocket: a text message was not valid UTF-8 (1007)")
            self.conn.send_close(1007, "text frames must be UTF-8")
            self.handle_parser_exception()
            return
        super().send_receive_event_to_app()


def _utf8(chunks: list[bytes]) -> bool:
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if data.isascii():
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
