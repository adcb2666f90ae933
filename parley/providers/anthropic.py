"""Anthropic's Messages API, streamed through the official SDK's raw event stream.

Options (``user_settings.text.options``): ``thinking_budget`` (int ≥ 1024: extended thinking, streamed as
reasoning), ``top_p`` (0–1), ``top_k`` (int ≥ 1), ``stop_sequences`` (list of non-empty strings).

Tools go out as ``tools`` (name, description, input_schema); a call streams as a ``tool_use`` block whose
input arrives in ``input_json_delta`` pieces. History sends a step's calls as ``tool_use`` blocks of the
assistant turn (after its signed thinking blocks, which the API requires back with thinking on) and the
results as ``tool_result`` blocks of the next user turn.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from anthropic import AsyncAnthropic, AsyncStream, Omit, omit
from anthropic import types as wire

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
    ThinkingBlock,
    ToolCallReady,
    ToolCallStarted,
    Usage,
    decode_arguments,
    stop_reason,
)
from parley.providers.errors import provider_errors, provider_label
from parley.tools.base import ToolCall

DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024  # the API's own minimum
MAX_STOP_SEQUENCES = 16


def _int_option(options: Mapping[str, Any], key: str) -> int | None:
    value = options.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number_option(options: Mapping[str, Any], key: str) -> float | None:
    value = options.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _stops_option(options: Mapping[str, Any]) -> list[str] | None:
    value = options.get("stop_sequences")
    if isinstance(value, list) and all(isinstance(s, str) and s for s in value):
        return value
    return None


Role = Literal["user", "assistant"]
# Blocks the API wants at the front of a turn: tool results before any text in a user turn, and the
# thinking that led to a step's calls first in an assistant turn.
_FIRST: dict[Role, tuple[str, ...]] = {
    "user": ("tool_result",),
    "assistant": ("thinking", "redacted_thinking"),
}
# The usage fields that together are a request's input; the API reports each in message_start and,
# cumulatively, in message_delta (MessageDeltaUsage).
INPUT_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end",
    "stop_sequence": "end",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
}


def _merged_turns(request: ProviderRequest) -> tuple[str, list[wire.MessageParam]]:
    """System text apart; the rest as alternating user and assistant turns, as the API requires.

    Empty messages are dropped and same-role neighbours merged; tool results travel in user turns, so
    the results of one step (and any user text after them) become one user turn.
    """
    system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)
    turns: list[tuple[Role, list[wire.ContentBlockParam]]] = []
    for message in request.messages:
        if message.role == "system" or not (blocks := _blocks(message)):
            continue
        role: Role = "assistant" if message.role == "assistant" else "user"
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    return system, [_turn(role, blocks) for role, blocks in turns]


def _blocks(message: ChatMessage) -> list[wire.ContentBlockParam]:
    """One message as content blocks; none for an empty one."""
    if message.role == "tool":
        result: wire.ToolResultBlockParam = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id or "",
            "is_error": message.is_error,
        }
        if message.content:  # the API refuses empty text blocks; no content at all is fine
            result["content"] = message.content
        return [result]
    blocks: list[wire.ContentBlockParam] = []
    if message.role == "assistant":
        blocks += [_thinking(block) for block in message.thinking]
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    if message.role == "assistant":
        blocks += [_tool_use(call) for call in message.tool_calls]
    return blocks


def _thinking(block: ThinkingBlock) -> wire.ThinkingBlockParam | wire.RedactedThinkingBlockParam:
    if block.redacted:
        return {"type": "redacted_thinking", "data": block.redacted}
    return {"type": "thinking", "thinking": block.text, "signature": block.signature}


def _tool_use(call: ToolCall) -> wire.ToolUseBlockParam:
    """A call as the API requires it, its input an object: arguments that never decoded are sent as {}.

    (The model was told of its mistake in the call's error result; the API would refuse anything else.)
    """
    arguments = decode_arguments(call.arguments) if isinstance(call.arguments, str) else call.arguments
    data = {} if isinstance(arguments, str) else dict(arguments)
    return {"type": "tool_use", "id": call.call_id, "name": call.name, "input": data}


def _turn(role: Role, blocks: list[wire.ContentBlockParam]) -> wire.MessageParam:
    """A turn from its blocks: front blocks first, neighbouring texts joined; lone text as a string."""
    first = _FIRST[role]
    ordered = [b for b in blocks if b["type"] in first] + [b for b in blocks if b["type"] not in first]
    merged: list[wire.ContentBlockParam] = []
    for block in ordered:
        previous = merged[-1] if merged else None
        if block["type"] == "text" and previous is not None and previous["type"] == "text":
            merged[-1] = {"type": "text", "text": f"{previous['text']}\n\n{block['text']}"}
        else:
            merged.append(block)
    content: str | list[wire.ContentBlockParam] = merged
    if len(merged) == 1 and merged[0]["type"] == "text":
        content = merged[0]["text"]
    if role == "assistant":
        return {"role": "assistant", "content": content}
    return {"role": "user", "content": content}


def _tools(request: ProviderRequest) -> list[wire.ToolUnionParam] | Omit:
    return [cast(wire.ToolParam, spec.to_anthropic()) for spec in request.tools] or omit


def _tool_choice(request: ProviderRequest) -> wire.ToolChoiceParam | Omit:
    """Parley's choice in the API's words: "required" is "any"; a tool's name forces that tool."""
    choice = request.tool_choice
    if not request.tools or choice is None:
        return omit
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    return {"type": "tool", "name": choice}


@dataclass
class _PartialCall:
    """A tool_use block being streamed: its input arrives as JSON text in ``input_json_delta`` pieces."""

    call_id: str
    name: str
    start_input: dict[str, object]  # the block's own input: {} when pieces follow
    pieces: list[str] = field(default_factory=list)

    def call(self) -> ToolCall:
        text = "".join(self.pieces)  # the API opens with an empty piece; an input sent whole has no others
        arguments = decode_arguments(text) if text.strip() else self.start_input
        return ToolCall(self.call_id, self.name, arguments)


@dataclass
class _PartialThinking:
    text: list[str]
    signature: str


@dataclass
class _Step:
    """One streamed answer: the events for each wire event, and what ``StepEnd`` needs once it is over.

    Content blocks are keyed by index: a tool_use block is a call from its start to its stop; thinking
    blocks are kept whole, with their signatures, to be sent back with the step's calls.
    """

    tools: bool  # the request offered tools: else no tool events and no StepEnd
    text: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    thinking: list[ThinkingBlock] = field(default_factory=list)
    open_calls: dict[int, _PartialCall] = field(default_factory=dict)
    open_thinking: dict[int, _PartialThinking] = field(default_factory=dict)
    input_counts: dict[str, int] = field(default_factory=dict)  # the latest of each of INPUT_COUNTS
    stop_reason: str | None = None

    def events(self, event: wire.RawMessageStreamEvent) -> list[ProviderEvent]:
        """The Parley events for one wire event; none for those Parley has no use for."""
        if isinstance(event, wire.RawContentBlockDeltaEvent):
            return self._delta(event.index, event.delta)
        if isinstance(event, wire.RawContentBlockStartEvent):
            return self._start(event.index, event.content_block)
        if isinstance(event, wire.RawContentBlockStopEvent):
            return self._stop(event.index)
        if isinstance(event, wire.RawMessageStartEvent):
            return [self._usage(event.message.usage)]
        if isinstance(event, wire.RawMessageDeltaEvent):
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            return [self._usage(event.usage)]
        return []

    def _usage(self, usage: wire.Usage | wire.MessageDeltaUsage) -> Usage:
        """The counts so far. message_delta's are cumulative and may correct message_start's (gateways
        send ``input_tokens: 0`` at the start and the real count at the end); a count it leaves out keeps
        its earlier value. Input includes the cached tokens, as OpenAI counts it."""
        for key in INPUT_COUNTS:
            if isinstance(value := getattr(usage, key, None), int):
                self.input_counts[key] = value
        output = getattr(usage, "output_tokens", None)
        return Usage(
            input_tokens=sum(self.input_counts.values()) if self.input_counts else None,
            output_tokens=output if isinstance(output, int) else None,
        )

    def _start(self, index: int, block: wire.ContentBlock) -> list[ProviderEvent]:
        if not self.tools:  # blocks are tracked only for the StepEnd of a request with tools
            return []
        if isinstance(block, wire.ToolUseBlock):
            self.open_calls[index] = _PartialCall(block.id, block.name, dict(block.input))
            return [ToolCallStarted(block.id, block.name)]
        if isinstance(block, wire.ThinkingBlock):
            self.open_thinking[index] = _PartialThinking([block.thinking], block.signature)
        elif isinstance(block, wire.RedactedThinkingBlock):
            self.thinking.append(ThinkingBlock(redacted=block.data))
        return []

    def _delta(self, index: int, delta: wire.RawContentBlockDelta) -> list[ProviderEvent]:
        if isinstance(delta, wire.TextDelta):
            if self.tools:
                self.text.append(delta.text)
            return [TextDelta(delta.text)]
        thinking = self.open_thinking.get(index)
        if isinstance(delta, wire.ThinkingDelta):
            if thinking is not None:
                thinking.text.append(delta.thinking)
            return [ReasoningDelta(delta.thinking)]
        if isinstance(delta, wire.SignatureDelta) and thinking is not None:
            thinking.signature = delta.signature
        elif isinstance(delta, wire.InputJSONDelta) and (call := self.open_calls.get(index)) is not None:
            call.pieces.append(delta.partial_json)
        return []  # citations_delta, and pieces of blocks Parley does not track

    def _stop(self, index: int) -> list[ProviderEvent]:
        if (call := self.open_calls.pop(index, None)) is not None:
            ready = call.call()
            self.calls.append(ready)
            return [ToolCallReady(ready)]
        if (thinking := self.open_thinking.pop(index, None)) is not None:
            self.thinking.append(ThinkingBlock("".join(thinking.text), thinking.signature))
        return []

    def end(self) -> StepEnd:
        calls = tuple(self.calls)
        raw = self.stop_reason
        reason = stop_reason(STOP_REASONS.get(raw or "", "other"), calls)
        message = ChatMessage(
            "assistant", "".join(self.text), tool_calls=calls, thinking=tuple(self.thinking)
        )
        return StepEnd(reason, message, raw)


class AnthropicProvider(Provider):
    """Claude models over the Messages API. SDK retries are off: Parley retries before the first token."""

    supports_tools = True

    def __init__(
        self,
        name: str = "anthropic",
        *,
        api_key: str | None,
        base_url: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.name = name
        self._client = AsyncAnthropic(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)

    async def aclose(self) -> None:
        await self._client.close()

    def check_options(self, options: Mapping[str, Any]) -> None:
        given = {key for key in ("thinking_budget", "top_p", "top_k", "stop_sequences") if key in options}
        budget = _int_option(options, "thinking_budget")
        if "thinking_budget" in given and (budget is None or budget < MIN_THINKING_BUDGET):
            raise ValidationFailed(
                f"options.thinking_budget must be a whole number of tokens, at least {MIN_THINKING_BUDGET}."
            )
        top_p = _number_option(options, "top_p")
        if "top_p" in given and (top_p is None or not 0 <= top_p <= 1):
            raise ValidationFailed("options.top_p must be a number from 0 to 1.")
        top_k = _int_option(options, "top_k")
        if "top_k" in given and (top_k is None or top_k < 1):
            raise ValidationFailed("options.top_k must be a whole number, at least 1.")
        stops = _stops_option(options)
        if "stop_sequences" in given and (stops is None or len(stops) > MAX_STOP_SEQUENCES):
            raise ValidationFailed(
                f"options.stop_sequences must be a list of up to {MAX_STOP_SEQUENCES} non-empty strings."
            )
        if budget is not None and top_k is not None:  # the API's own rules for extended thinking
            raise ValidationFailed("options.top_k cannot be combined with options.thinking_budget.")
        if budget is not None and top_p is not None and top_p < 0.95:
            raise ValidationFailed("options.top_p must be from 0.95 to 1 with options.thinking_budget.")

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        options = request.options
        system, messages = _merged_turns(request)
        max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
        budget = _int_option(options, "thinking_budget")
        thinking: wire.ThinkingConfigEnabledParam | None = None
        # Sampling knobs go in the body as-is: this SDK's `create` no longer names them.
        extra: dict[str, object] = {}
        if budget is not None and budget >= MIN_THINKING_BUDGET:
            thinking = {"type": "enabled", "budget_tokens": budget}
            if max_tokens <= budget:  # the budget is part of max_tokens; leave room for the answer
                max_tokens = budget + DEFAULT_MAX_TOKENS
        elif request.temperature is not None:  # with thinking on, the API takes no temperature but 1
            extra["temperature"] = min(request.temperature, 1.0)  # Parley allows 0–2, Anthropic 0–1
        if (top_p := _number_option(options, "top_p")) is not None:
            extra["top_p"] = top_p
        if (top_k := _int_option(options, "top_k")) is not None:
            extra["top_k"] = top_k
        stop_sequences = _stops_option(options)

        events: AsyncStream[wire.RawMessageStreamEvent] | None = None
        step = _Step(tools=bool(request.tools))
        finished = False
        try:
            with provider_errors(self.name, self._client.api_key):
                events = await self._client.messages.create(
                    model=request.model,
                    max_tokens=max_tokens,
                    messages=messages,
                    system=system or omit,
                    thinking=thinking or omit,
                    stop_sequences=stop_sequences or omit,
                    tools=_tools(request),
                    tool_choice=_tool_choice(request),
                    extra_body=extra or None,
                    stream=True,
                )
                async for event in events:
                    if isinstance(event, wire.RawMessageStopEvent):
                        finished = True
                        break
                    for mapped in step.events(event):
                        yield mapped
        finally:
            if events is not None:
                await events.close()  # releases the HTTP response at once, also on aclose() or cancel
        if not finished:
            message = (
                f"The stream from {provider_label(self.name)} ended early, before the answer was complete."
            )
            raise ProviderFailed(message, retryable=True)
        if step.tools:
            yield step.end()
