"""A fake Anthropic Messages API: real HTTP on a free loopback port, speaking the real SSE wire format.

Start it in the test's own loop (``async with FakeAnthropic() as fake``), point the SDK at
``fake.base_url``, and script the replies. Replies are queued: each request takes the next unused one;
once all are used, the last one answers every later request (none queued: a short default answer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.providers.fake_vendor import EventStream, FakeVendor


@dataclass(frozen=True)
class Reply:
    """One scripted answer: an HTTP error (``status`` ≠ 200) or an event stream."""

    status: int = 200
    error_type: str = "api_error"  # HTTP error: Anthropic's error.type in the JSON body
    message: str = ""
    text_chunks: tuple[str, ...] = ("Hello", " from", " the fake.")
    thinking_chunks: tuple[str, ...] = ()
    delay_s: float = 0.0  # before each content delta
    usage: tuple[int, int] = (10, 5)  # (input tokens, final output tokens)
    cache_read_tokens: int = 0  # message_start's usage.cache_read_input_tokens, when not 0
    error_after: int | None = None  # `event: error` after this many content deltas
    stream_error_type: str = "overloaded_error"
    stream_error_message: str = "Overloaded"
    cut_after: int | None = None  # the body ends after this many content deltas, without message_stop
    abrupt: bool = False  # with cut_after: drop the connection instead of ending the body cleanly


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event as Anthropic writes it: the event name, then its JSON with the same type."""
    return f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n".encode()


def _delta(index: int, delta: dict[str, str]) -> bytes:
    return sse("content_block_delta", {"index": index, "delta": delta})


def _frames(reply: Reply, model: str) -> list[tuple[float, bytes]]:
    """(delay before, bytes) for the whole stream, stopping at a scripted error or cut."""
    input_tokens, output_tokens = reply.usage
    usage = {"input_tokens": input_tokens, "output_tokens": 1}
    if reply.cache_read_tokens:
        usage["cache_read_input_tokens"] = reply.cache_read_tokens
    message: dict[str, Any] = {
        "id": "msg_fake_0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    frames: list[tuple[float, bytes]] = [(0.0, sse("message_start", {"message": message}))]
    error = sse("error", {"error": {"type": reply.stream_error_type, "message": reply.stream_error_message}})
    blocks = [("text", reply.text_chunks)]
    if reply.thinking_chunks:
        blocks.insert(0, ("thinking", reply.thinking_chunks))
    sent = 0
    for index, (kind, chunks) in enumerate(blocks):
        empty = {"type": kind, kind: ""} | ({"signature": ""} if kind == "thinking" else {})
        frames.append((0.0, sse("content_block_start", {"index": index, "content_block": empty})))
        if index == 0:
            frames.append((0.0, sse("ping", {})))
        for chunk in chunks:
            if reply.error_after is not None and sent >= reply.error_after:
                return [*frames, (0.0, error)]
            if reply.cut_after is not None and sent >= reply.cut_after:
                return frames
            frames.append((reply.delay_s, _delta(index, {"type": f"{kind}_delta", kind: chunk})))
            sent += 1
        if kind == "thinking":
            frames.append((0.0, _delta(index, {"type": "signature_delta", "signature": "c2lnbmF0dXJl"})))
        frames.append((0.0, sse("content_block_stop", {"index": index})))
    if reply.error_after is not None:  # asked to fail after more deltas than there are: fail at the end
        return [*frames, (0.0, error)]
    if reply.cut_after is not None:
        return frames
    stop = {"stop_reason": "end_turn", "stop_sequence": None}
    frames.append((0.0, sse("message_delta", {"delta": stop, "usage": {"output_tokens": output_tokens}})))
    frames.append((0.0, sse("message_stop", {})))
    return frames


class FakeAnthropic(FakeVendor[Reply]):
    """The fake Anthropic server (see ``FakeVendor``), serving ``POST /v1/messages``."""

    name = "Anthropic"

    def __init__(self) -> None:
        super().__init__(Reply())

    # --- scripting -------------------------------------------------------------------------------

    def script(
        self,
        text_chunks: Sequence[str] = ("Hello", " from", " the fake."),
        thinking_chunks: Sequence[str] = (),
        delay_s: float = 0.0,
        usage: tuple[int, int] = (10, 5),
        cache_read_tokens: int = 0,
    ) -> None:
        """A complete streamed answer."""
        self.reply(
            Reply(
                text_chunks=tuple(text_chunks),
                thinking_chunks=tuple(thinking_chunks),
                delay_s=delay_s,
                usage=usage,
                cache_read_tokens=cache_read_tokens,
            )
        )

    def fail(
        self, status: int = 429, error_type: str = "rate_limit_error", message: str = "Rate limited"
    ) -> None:
        """An HTTP error with Anthropic's JSON error body, before any stream."""
        self.reply(Reply(status=status, error_type=error_type, message=message))

    def error_after(
        self,
        n_chunks: int,
        error_type: str = "overloaded_error",
        message: str = "Overloaded",
        text_chunks: Sequence[str] = ("one ", "two ", "three ", "four"),
        delay_s: float = 0.0,
    ) -> None:
        """A 200 stream that sends ``n_chunks`` deltas, then an SSE ``event: error``."""
        self.reply(
            Reply(
                text_chunks=tuple(text_chunks),
                delay_s=delay_s,
                error_after=n_chunks,
                stream_error_type=error_type,
                stream_error_message=message,
            )
        )

    def cut_after(
        self,
        n_chunks: int,
        text_chunks: Sequence[str] = ("one ", "two ", "three ", "four"),
        abrupt: bool = False,
    ) -> None:
        """A 200 stream that stops after ``n_chunks`` deltas without ``message_stop``."""
        self.reply(Reply(text_chunks=tuple(text_chunks), cut_after=n_chunks, abrupt=abrupt))

    # --- serving -------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [Route("/v1/messages", self._messages, methods=["POST"])]

    async def _messages(self, request: Request) -> Response:
        body, reply = await self._take(request)
        if reply.status != 200:
            error = {"type": "error", "error": {"type": reply.error_type, "message": reply.message}}
            return JSONResponse(error, status_code=reply.status, headers={"request-id": "req_fake"})
        return EventStream(_frames(reply, str(body.get("model", ""))), reply.abrupt, self, "request-id")
