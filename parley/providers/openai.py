"""OpenAI's Chat Completions API, streamed through the official SDK: OpenAI and every compatible server.

Options (``user_settings.text.options``): ``reasoning_effort`` (string), ``top_p`` (0–1), ``seed`` (int),
``stop`` (string or list of strings), ``presence_penalty`` and ``frequency_penalty`` (-2–2). Others are
ignored. Reasoning arrives as ``delta.reasoning_content`` (DeepSeek, vLLM, llama.cpp) or ``delta.reasoning``
(OpenRouter, Ollama): fields the SDK does not declare, so they are read from the delta's extras.

Tools go out as ``tools`` (function tools); calls stream as ``delta.tool_calls`` pieces keyed by ``index``,
the id and name on a call's first piece only, the arguments as JSON text in chunks. History sends a step's
calls as the assistant message's ``tool_calls`` and each result as a ``role: tool`` message.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from openai import AsyncOpenAI, Omit, omit
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
    ChatCompletionToolMessageParam,
    ChatCompletionToolUnionParam,
)
from openai.types.chat.chat_completion_chunk import ChoiceDelta, ChoiceDeltaToolCall

from parley.errors import ProviderFailed, ValidationFailed
from parley.providers.base import (
    ChatMessage,
    Provider,
    ProviderEvent,
    ProviderRequest,
    ReasoningDelta,
    StepEnd,
    StopReason,
    TextDelta,
    ToolCallReady,
    ToolCallStarted,
    Usage,
    arguments_json,
    decode_arguments,
    stop_reason,
)
from parley.providers.errors import provider_errors, provider_label
from parley.tools.base import ToolCall

NO_KEY = "not-needed"  # the SDK insists on a key; keyless local servers ignore it
REASONING_MODELS = ("o1", "o3", "o4", "gpt-5")  # max_completion_tokens, not max_tokens; no temperature
REASONING_FIELDS = ("reasoning_content", "reasoning")
MAX_STOPS = 16


def _number(value: object, low: float, high: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _stop(value: object) -> bool:
    if isinstance(value, str):
        return bool(value)
    return (
        isinstance(value, list)
        and 0 < len(value) <= MAX_STOPS
        and all(isinstance(s, str) and s for s in value)
    )


# option name -> (accepts the value, what it must be)
OPTIONS: dict[str, tuple[Callable[[object], bool], str]] = {
    "reasoning_effort": (lambda v: isinstance(v, str) and bool(v), 'a string such as "low" or "high"'),
    "top_p": (lambda v: _number(v, 0, 1), "a number from 0 to 1"),
    "seed": (_whole, "a whole number"),
    "stop": (_stop, f"a non-empty string or a list of up to {MAX_STOPS} non-empty strings"),
    "presence_penalty": (lambda v: _number(v, -2, 2), "a number from -2 to 2"),
    "frequency_penalty": (lambda v: _number(v, -2, 2), "a number from -2 to 2"),
}


def _messages(request: ProviderRequest) -> list[ChatCompletionMessageParam]:
    """The conversation in order; empty messages dropped (some servers refuse them), tool exchanges kept."""
    messages: list[ChatCompletionMessageParam] = []
    for m in request.messages:
        if m.role == "tool":
            messages.append(_tool_message(m))
        elif m.role == "assistant" and m.tool_calls:
            messages.append(
                {
                    "role": "assistant",
                    "content": m.content or None,  # the API's own shape for a step with only calls
                    "tool_calls": [_call_param(call) for call in m.tool_calls],
                }
            )
        elif not m.content:
            continue
        elif m.role == "system":
            messages.append({"role": "system", "content": m.content})
        elif m.role == "assistant":
            messages.append({"role": "assistant", "content": m.content})
        else:
            messages.append({"role": "user", "content": m.content})
    return messages


def _call_param(call: ToolCall) -> ChatCompletionMessageFunctionToolCallParam:
    return {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments_json(call)},
    }


def _tool_message(message: ChatMessage) -> ChatCompletionToolMessageParam:
    """A call's result. The API has no error flag, so a failure says so in its text; never empty."""
    output = message.content or "(no output)"
    return {
        "role": "tool",
        "tool_call_id": message.tool_call_id or "",
        "content": f"Error: {output}" if message.is_error else output,
    }


def _tools(request: ProviderRequest) -> list[ChatCompletionToolUnionParam] | Omit:
    return [cast(ChatCompletionFunctionToolParam, spec.to_openai()) for spec in request.tools] or omit


def _tool_choice(request: ProviderRequest) -> ChatCompletionToolChoiceOptionParam | Omit:
    choice = request.tool_choice
    if not request.tools or choice is None:
        return omit
    if choice in ("auto", "required", "none"):
        return cast(ChatCompletionToolChoiceOptionParam, choice)
    return {"type": "function", "function": {"name": choice}}


def _body(request: ProviderRequest) -> dict[str, object]:
    """Sampling settings for the request body: only those given, and options only when valid."""
    body: dict[str, object] = {
        key: value
        for key, (accepts, _) in OPTIONS.items()
        if (value := request.options.get(key)) is not None and accepts(value)
    }
    reasoning = request.model.startswith(REASONING_MODELS)
    if request.temperature is not None and not reasoning:  # reasoning models refuse any but the default
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_completion_tokens" if reasoning else "max_tokens"] = request.max_tokens
    return body


def _reasoning(delta: ChoiceDelta) -> str | None:
    extra = delta.model_extra or {}
    for key in REASONING_FIELDS:
        if isinstance(value := extra.get(key), str) and value:
            return value
    return None


FINISH_REASONS: dict[str, StopReason] = {
    "stop": "end",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
}


@dataclass
class _PartialCall:
    """A tool call being streamed: the id and name come with its first piece, the arguments in chunks."""

    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    started: bool = False

    def call(self) -> ToolCall:
        return ToolCall(self.call_id, self.name, decode_arguments("".join(self.arguments)))


@dataclass
class _Step:
    """One streamed answer: the events of each chunk, and what ``StepEnd`` needs once it is over.

    Tool-call pieces are keyed by their ``index``: parallel calls may interleave, and only a call's first
    piece has its id and name. Calls are ready only at ``finish_reason``, when no piece can follow.
    """

    tools: bool  # the request offered tools: else tool pieces are ignored and no StepEnd is sent
    text: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    finish_reason: str | None = None

    def events(self, chunk: ChatCompletionChunk) -> list[ProviderEvent]:
        """The Parley events in one chunk: the first choice's deltas, then usage (sent with no choices)."""
        events: list[ProviderEvent] = []
        for choice in (chunk.choices or [])[:1]:
            if reasoning := _reasoning(choice.delta):
                events.append(ReasoningDelta(reasoning))
            if text := choice.delta.content or choice.delta.refusal:
                events.append(TextDelta(text))
            if self.tools:  # a step's text and calls are kept only for its StepEnd
                if text:
                    self.text.append(text)
                events += self._tool_pieces(choice.delta.tool_calls or [])
            if choice.finish_reason and self.finish_reason is None:
                self.finish_reason = choice.finish_reason
                events += [ToolCallReady(call) for call in self.ready()]
        if chunk.usage is not None:
            events.append(Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens))
        return events

    def _tool_pieces(self, pieces: list[ChoiceDeltaToolCall]) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        for position, piece in enumerate(pieces):
            index = getattr(piece, "index", None)  # required by the API, yet some servers leave it out
            partial = self.calls.setdefault(index if isinstance(index, int) else position, _PartialCall())
            partial.call_id = partial.call_id or piece.id or ""
            if piece.function is not None:
                partial.name = partial.name or piece.function.name or ""
                if piece.function.arguments:
                    partial.arguments.append(piece.function.arguments)
            if partial.name and not partial.started:
                partial.started = True
                partial.call_id = partial.call_id or f"call_{uuid.uuid4().hex[:24]}"  # servers that send none
                events.append(ToolCallStarted(partial.call_id, partial.name))
        return events

    def ready(self) -> list[ToolCall]:
        """The complete calls in index order; a piece that never named its tool is not a call."""
        return [partial.call() for _, partial in sorted(self.calls.items()) if partial.started]

    def end(self) -> StepEnd:
        calls = tuple(self.ready())
        raw = self.finish_reason
        reason = stop_reason(FINISH_REASONS.get(raw or "", "other"), calls)
        return StepEnd(reason, ChatMessage("assistant", "".join(self.text), tool_calls=calls), raw)


class OpenAIProvider(Provider):
    """Chat Completions, streamed. SDK retries are off: Parley retries before the first token itself."""

    supports_tools = True
    needs_key = True

    def __init__(
        self,
        name: str = "openai",
        *,
        api_key: str | None,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self._key = api_key
        # An explicit key always: given None, the SDK would send OPENAI_API_KEY to whatever server this is.
        self._client = AsyncOpenAI(
            api_key=api_key or NO_KEY,
            base_url=base_url,
            timeout=timeout_s,
            max_retries=0,
            default_headers=headers,
        )

    async def aclose(self) -> None:
        await self._client.close()

    def check_options(self, options: Mapping[str, Any]) -> None:
        for key, (accepts, expected) in OPTIONS.items():
            value = options.get(key)
            if value is not None and not accepts(value):
                raise ValidationFailed(f"options.{key} must be {expected}.")

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        step = _Step(tools=bool(request.tools))
        with provider_errors(self.name, self._key):
            # The context manager closes the HTTP response at once, also on aclose() or cancellation.
            async with await self._client.chat.completions.create(
                model=request.model,
                messages=_messages(request),
                tools=_tools(request),
                tool_choice=_tool_choice(request),
                stream=True,
                stream_options={"include_usage": True},
                extra_body=_body(request) or None,
            ) as chunks:
                async for chunk in chunks:
                    for event in step.events(chunk):
                        yield event
        if step.finish_reason is None:
            message = (
                f"The stream from {provider_label(self.name)} ended early, before the answer was complete."
            )
            raise ProviderFailed(message, retryable=True)
        if step.tools:
            yield step.end()
