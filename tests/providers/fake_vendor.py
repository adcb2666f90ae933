"""What the fake vendor servers share: the reply queue, the recording, the SSE response, the server's life.

A subclass gives its ``name``, its ``routes()`` and its default reply; its handlers call ``_take(request)``
to record the request and get the next scripted reply, and answer a stream with ``EventStream``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

ReplyT = TypeVar("ReplyT")


@dataclass(frozen=True)
class FakeToolCall:
    """A tool call a fake streams: its id, its name, and its arguments' JSON text in the pieces sent."""

    call_id: str
    name: str
    argument_chunks: tuple[str, ...] = ()

    @property
    def arguments(self) -> str:
        return "".join(self.argument_chunks)


class EventStream(Response):
    """Sends the frames, and notes a client that hangs up before the stream's end."""

    def __init__(
        self, frames: list[tuple[float, bytes]], abrupt: bool, fake: FakeVendor[Any], request_id_header: str
    ) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.frames = frames
        self.abrupt = abrupt
        self.fake = fake
        self.request_id_header = request_id_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (self.request_id_header.encode(), b"req_fake"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        ended = False

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not ended:
                self.fake.client_disconnected.set()

        watcher = asyncio.create_task(watch())
        try:
            for delay, frame in self.frames:
                if delay:
                    await asyncio.wait({watcher}, timeout=delay)
                if watcher.done():
                    return
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            if self.abrupt:
                return  # uvicorn closes the connection of a response left unfinished
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            ended = True
            watcher.cancel()
            await self.fake._stream_ended()


class FakeVendor(Generic[ReplyT]):
    """The fake server. ``requests`` holds each request's JSON body, ``headers`` its headers.

    Replies are queued: each request takes the next unused one; once all are used, the last one answers
    every later request (none queued: ``default_reply``).
    """

    name = "vendor"  # for error messages
    base_path = ""  # appended to the server's root in ``base_url``

    def __init__(self, default_reply: ReplyT) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.client_disconnected = asyncio.Event()
        self.streams_ended = 0  # event streams finished, however they ended
        self._ended = asyncio.Condition()
        self._default_reply = default_reply
        self._replies: list[ReplyT] = []
        self._used = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    def routes(self) -> list[Route]:
        raise NotImplementedError

    # --- scripting -------------------------------------------------------------------------------

    def reply(self, reply: ReplyT) -> None:
        self._replies.append(reply)

    def _next_reply(self) -> ReplyT:
        if self._used < len(self._replies):
            self._used += 1
            return self._replies[self._used - 1]
        return self._replies[-1] if self._replies else self._default_reply

    async def wait_streams_ended(self, count: int) -> None:
        async with self._ended:
            await self._ended.wait_for(lambda: self.streams_ended >= count)

    async def _stream_ended(self) -> None:
        async with self._ended:
            self.streams_ended += 1
            self._ended.notify_all()

    # --- serving -------------------------------------------------------------------------------

    async def _take(self, request: Request) -> tuple[dict[str, Any], ReplyT]:
        """Records the request; returns its JSON body and the reply it gets."""
        body: dict[str, Any] = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        return body, self._next_reply()

    async def start(self) -> None:
        app = Starlette(routes=self.routes())
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        config.timeout_graceful_shutdown = 2
        self._server = server = uvicorn.Server(config)
        self._task = task = asyncio.create_task(server.serve())
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError(f"the fake {self.name} server stopped during startup")
                await asyncio.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 10)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
