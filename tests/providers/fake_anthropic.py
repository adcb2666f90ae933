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

from tests.providers.fake_vendor import EventStream, FakeToolCall, FakeVendor


@dataclass(frozen=True)
class Reply:
    """One scripted answer: an HTTP error (``status`` ≠ 200) or an event stream."""

    status: int = 200
    error_type: str = "api_error"  # HTTP error: Anthropic's error.type in the JSON body
    message: str = ""
    text_chunks: tuple[str, ...] = ("Hello", " from", " the fake.")
    thinking_chunks: tuple[str, ...] = ()
    redacted_thinking: str = ""  # when set, a redacted_thinking block with this data, after the thinking
    tool_calls: tuple[FakeToolCall, ...] = ()  # tool_use blocks after the text (none: no text block)
    stop_reason: str | None = None  # message_delta's; default "tool_use" with tool calls, else "end_turn"
    delay_s: float = 0.0  # before each content delta
    usage: tuple[int, int] = (10, 5)  # (input tokens, final output tokens)
    cache_read_tokens: int = 0  # message_start's usage.cache_read_input_tokens, when not 0
    late_input: bool = False  # message_start says 0 input tokens, message_delta the real counts (gateways)
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


SIGNATURE = "c2lnbmF0dXJl"  # the signature_delta every scripted thinking block ends with

# A content block as streamed: its content_block_start body, then its deltas, each marked counted (a
# scripted chunk, which `cut_after`, `error_after` and `delay_s` apply to) or not (the wire's extras).
Block = tuple[dict[str, Any], list[tuple[dict[str, str], bool]]]


def _blocks(reply: Reply) -> list[Block]:
    """The reply's content blocks in Anthropic's order: thinking, redacted thinking, text, tool uses."""
    blocks: list[Block] = []
    if reply.thinking_chunks:
        deltas = [({"type": "thinking_delta", "thinking": c}, True) for c in reply.thinking_chunks]
        deltas.append(({"type": "signature_delta", "signature": SIGNATURE}, False))
        blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, deltas))
    if reply.redacted_thinking:
        blocks.append(({"type": "redacted_thinking", "data": reply.redacted_thinking}, []))
    if reply.text_chunks or not reply.tool_calls:
        deltas = [({"type": "text_delta", "text": c}, True) for c in reply.text_chunks]
        blocks.append(({"type": "text", "text": ""}, deltas))
    for call in reply.tool_calls:
        start = {"type": "tool_use", "id": call.call_id, "name": call.name, "input": {}}
        deltas = [({"type": "input_json_delta", "partial_json": ""}, False)]  # the API opens with one
        deltas += [({"type": "input_json_delta", "partial_json": c}, True) for c in call.argument_chunks]
        blocks.append((start, deltas))
    return blocks


def _frames(reply: Reply, model: str) -> list[tuple[float, bytes]]:
    """(delay before, bytes) for the whole stream, stopping at a scripted error or cut."""
    input_tokens, output_tokens = reply.usage
    usage = {"input_tokens": input_tokens, "output_tokens": 1}
    if reply.cache_read_tokens:
        usage["cache_read_input_tokens"] = reply.cache_read_tokens
    final = {"output_tokens": output_tokens}
    if reply.late_input:  # as LiteLLM's Anthropic endpoint streams: the counts are known only at the end
        final = {**usage, "output_tokens": output_tokens}
        usage = {"input_tokens": 0, "output_tokens": 1}
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
    sent = 0
    for index, (start, deltas) in enumerate(_blocks(reply)):
        frames.append((0.0, sse("content_block_start", {"index": index, "content_block": start})))
        if index == 0:
            frames.append((0.0, sse("ping", {})))
        for delta, counted in deltas:
            if counted and reply.error_after is not None and sent >= reply.error_after:
                return [*frames, (0.0, error)]
            if counted and reply.cut_after is not None and sent >= reply.cut_after:
                return frames
            frames.append((reply.delay_s if counted else 0.0, _delta(index, delta)))
            sent += counted
        frames.append((0.0, sse("content_block_stop", {"index": index})))
    if reply.error_after is not None:  # asked to fail after more deltas than there are: fail at the end
        return [*frames, (0.0, error)]
    if reply.cut_after is not None:
        return frames
    stop_reason = reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")
    stop = {"stop_reason": stop_reason, "stop_sequence": None}
    frames.append((0.0, sse("message_delta", {"delta": stop, "usage": final})))
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
        late_input: bool = False,
        tool_calls: Sequence[FakeToolCall] = (),
        redacted_thinking: str = "",
        stop_reason: str | None = None,
    ) -> None:
        """A complete streamed answer: thinking, text, then tool_use blocks with their input in pieces."""
        self.reply(
            Reply(
                text_chunks=tuple(text_chunks),
                thinking_chunks=tuple(thinking_chunks),
                redacted_thinking=redacted_thinking,
                tool_calls=tuple(tool_calls),
                stop_reason=stop_reason,
                delay_s=delay_s,
                usage=usage,
                cache_read_tokens=cache_read_tokens,
                late_input=late_input,
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
