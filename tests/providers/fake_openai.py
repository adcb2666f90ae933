"""A fake OpenAI-compatible Chat Completions server: real HTTP on a free loopback port, real SSE wire format.

Start it in the test's own loop (``async with FakeOpenAI() as fake``), point the SDK at ``fake.base_url``
and script the replies. Replies are queued: each request takes the next unused one; once all are used, the
last one answers every later request (none queued: a short default answer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import zip_longest
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.providers.fake_vendor import EventStream, FakeToolCall, FakeVendor

CHUNK_ID = "chatcmpl-fake0001"
CREATED = 1_700_000_000


def error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    """OpenAI's JSON error body."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


DEFAULT_ERRORS: dict[int, dict[str, Any]] = {
    400: error_body("Invalid request.", "invalid_request_error", None),
    401: error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    429: error_body("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: error_body("The server had an error while processing your request.", "server_error", None),
}


@dataclass(frozen=True)
class Reply:
    """One scripted answer: an HTTP error (``status`` ≠ 200) or an event stream."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)  # HTTP error: the JSON body
    text_chunks: tuple[str, ...] = ("Hello", " from", " the fake.")
    reasoning_chunks: tuple[str, ...] = ()
    reasoning_field: str = "reasoning_content"  # or "reasoning" (OpenRouter, Ollama)
    refusal_chunks: tuple[str, ...] = ()
    tool_calls: tuple[FakeToolCall, ...] = ()  # streamed after the text, as `delta.tool_calls` pieces
    interleave: bool = False  # the calls' pieces alternate by index, as parallel calls may
    delay_s: float = 0.0  # before each content delta
    usage: tuple[int, int] = (10, 5)  # (prompt tokens, completion tokens)
    finish_reason: str = "stop"
    cut_after: int | None = None  # the stream stops after this many deltas: no finish_reason, no [DONE]
    abrupt: bool = False  # with cut_after: drop the connection instead of ending the body cleanly
    error_after: int | None = None  # after this many deltas, a `data: {"error": ...}` event, then the end
    stream_error: dict[str, Any] = field(
        default_factory=lambda: error_body("The server had an error.", "server_error", None)
    )


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event as OpenAI writes it: a ``data:`` line and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _usage_chunk(model: str, usage: tuple[int, int]) -> dict[str, Any]:
    prompt, completion = usage
    totals = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [],
        "usage": totals,
    }


def _tool_deltas(calls: Sequence[FakeToolCall], interleave: bool) -> list[dict[str, Any]]:
    """Each call as OpenAI streams it: a first piece with id, type, name and empty arguments, then one
    piece per argument chunk with only ``index`` and ``function.arguments``."""
    per_call = [
        [
            {
                "index": i,
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
        ]
        + [{"index": i, "function": {"arguments": piece}} for piece in call.argument_chunks]
        for i, call in enumerate(calls)
    ]
    if interleave:
        pieces = [p for row in zip_longest(*per_call) for p in row if p is not None]
    else:
        pieces = [p for row in per_call for p in row]
    return [{"tool_calls": [piece]} for piece in pieces]


def _frames(reply: Reply, model: str, include_usage: bool) -> list[tuple[float, bytes]]:
    """(delay before, bytes) for the whole stream, stopping at a scripted cut or error."""
    frames = [(0.0, sse(chunk(model, {"role": "assistant", "content": ""})))]
    deltas = [{reply.reasoning_field: text} for text in reply.reasoning_chunks]
    deltas += [{"content": text} for text in reply.text_chunks]
    deltas += [{"refusal": text} for text in reply.refusal_chunks]
    deltas += _tool_deltas(reply.tool_calls, reply.interleave)
    for sent, delta in enumerate(deltas):
        if reply.cut_after is not None and sent >= reply.cut_after:
            return frames
        if reply.error_after is not None and sent >= reply.error_after:
            return [*frames, (0.0, sse(reply.stream_error))]
        frames.append((reply.delay_s, sse(chunk(model, delta))))
    if reply.cut_after is not None:
        return frames
    if reply.error_after is not None:
        return [*frames, (0.0, sse(reply.stream_error))]
    frames.append((0.0, sse(chunk(model, {}, reply.finish_reason))))
    if include_usage:
        frames.append((0.0, sse(_usage_chunk(model, reply.usage))))
    return [*frames, (0.0, sse("[DONE]"))]


class FakeOpenAI(FakeVendor[Reply]):
    """The fake OpenAI server (see ``FakeVendor``), serving ``POST /v1/chat/completions``."""

    name = "OpenAI"
    base_path = "/v1"

    def __init__(self) -> None:
        super().__init__(Reply())

    # --- scripting -------------------------------------------------------------------------------

    def script(
        self,
        text_chunks: Sequence[str] = ("Hello", " from", " the fake."),
        reasoning_chunks: Sequence[str] = (),
        reasoning_field: str = "reasoning_content",
        delay_s: float = 0.0,
        usage: tuple[int, int] = (10, 5),
        finish_reason: str | None = None,
        refusal_chunks: Sequence[str] = (),
        tool_calls: Sequence[FakeToolCall] = (),
        interleave: bool = False,
    ) -> None:
        """A complete streamed answer: reasoning deltas, text deltas, tool-call pieces, finish_reason
        (default "tool_calls" with calls, else "stop"), usage, [DONE]."""
        self.reply(
            Reply(
                text_chunks=tuple(text_chunks),
                reasoning_chunks=tuple(reasoning_chunks),
                reasoning_field=reasoning_field,
                refusal_chunks=tuple(refusal_chunks),
                tool_calls=tuple(tool_calls),
                interleave=interleave,
                delay_s=delay_s,
                usage=usage,
                finish_reason=finish_reason or ("tool_calls" if tool_calls else "stop"),
            )
        )

    def fail(self, status: int = 429, body: dict[str, Any] | None = None) -> None:
        """An HTTP error with the vendor's JSON error body, before any stream."""
        default = DEFAULT_ERRORS.get(status, error_body(f"HTTP {status}", "server_error", None))
        self.reply(Reply(status=status, body=default if body is None else body))

    def cut_after(
        self, n_chunks: int, text_chunks: Sequence[str] = ("one ", "two ", "three "), abrupt: bool = False
    ) -> None:
        """A 200 stream that stops after ``n_chunks`` deltas, with no finish_reason and no [DONE]."""
        self.reply(Reply(text_chunks=tuple(text_chunks), cut_after=n_chunks, abrupt=abrupt))

    def error_after(
        self,
        n_chunks: int,
        error: dict[str, Any] | None = None,
        text_chunks: Sequence[str] = ("one ", "two ", "three "),
    ) -> None:
        """A 200 stream: ``n_chunks`` deltas, then ``data: {"error": ...}`` (as OpenRouter and vLLM do)."""
        reply = Reply(text_chunks=tuple(text_chunks), error_after=n_chunks)
        self.reply(reply if error is None else replace(reply, stream_error=error))

    # --- serving -------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [Route("/v1/chat/completions", self._completions, methods=["POST"])]

    async def _completions(self, request: Request) -> Response:
        body, reply = await self._take(request)
        if reply.status != 200:
            return JSONResponse(reply.body, status_code=reply.status, headers={"x-request-id": "req_fake"})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        frames = _frames(reply, str(body.get("model", "")), include_usage)
        return EventStream(frames, reply.abrupt, self, "x-request-id")
