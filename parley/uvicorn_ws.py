"""Reaching into uvicorn's WebSocket protocol object: the one file that touches uvicorn's private attributes.

Two things ASGI cannot do fast enough or at all: write a batch of frames in one socket write
(``DirectSend``), and drop a connection at once with its unsent bytes (``abort_transport``). Both find
uvicorn's protocol object behind ``WebSocket._receive`` and check every attribute they use; where one is
missing (another server, another uvicorn) they decline and the caller falls back to ASGI.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.websockets import WebSocket


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
