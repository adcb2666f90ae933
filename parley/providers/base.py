"""The provider interface, its stream events, and the registry that routes a model name to a provider.

Tools: a request may offer ``tools``; the model then answers with text, tool calls, or both, and the stream
reports each call twice — ``ToolCallStarted`` as soon as the model names it, ``ToolCallReady`` once its
arguments are complete — and ends with ``StepEnd``, which holds the assistant message to send back with
the tool results on the next step. A request without tools streams exactly as before: no tool events, no
``StepEnd``, so callers that never offer tools need not know about them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from parley.errors import ProviderFailed
from parley.tools.base import ToolCall, ToolResult, ToolSpec

log = logging.getLogger("parley.providers")


@dataclass(frozen=True)
class ThinkingBlock:
    """Signed reasoning a vendor wants back, verbatim, in the assistant message of a tool-use step.

    Anthropic rejects the step after a tool call when extended thinking is on and the assistant message
    lacks its thinking blocks with their signatures. ``redacted`` holds a ``redacted_thinking`` block's
    opaque data (then ``text`` and ``signature`` are empty). Other vendors ignore these.
    """

    text: str = ""
    signature: str = ""
    redacted: str = ""


@dataclass(frozen=True)
class ChatMessage:
    """One message of the conversation a provider is sent.

    ``role`` is "system", "user", "assistant" or "tool". An assistant message of a tool-use step carries the
    calls the model made (``tool_calls``; ``content`` is any text it wrote before them, often empty) and,
    for Anthropic with thinking on, its ``thinking`` blocks. A "tool" message is one call's result:
    ``tool_call_id`` names the call, ``content`` is the output, ``is_error`` marks a failure.
    """

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    is_error: bool = False
    thinking: tuple[ThinkingBlock, ...] = ()

    @classmethod
    def tool_result(cls, result: ToolResult) -> ChatMessage:
        """The "tool" message that shows the model one call's result."""
        return cls("tool", result.output, tool_call_id=result.call_id, is_error=result.is_error)


@dataclass(frozen=True)
class ProviderRequest:
    """One call to a model. ``tool_choice``: None (the vendor's default, "auto"), "auto", "required",
    "none" (tools stay defined, the model must answer in text: for a last step), or a tool's name."""

    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    tools: Sequence[ToolSpec] = ()
    tool_choice: str | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts known so far; a later Usage replaces the fields it sets."""

    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """The model began a call: enough to show progress while its arguments still stream."""

    call_id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallReady:
    """A call whose arguments are complete: a decoded JSON object, or the raw text when it is not one.

    Raw text is passed on rather than refused so the tool registry can answer the model with an
    ``invalid_arguments`` result it can correct.
    """

    call: ToolCall


# Why a step ended, the same for every vendor: "end" (a finished answer), "tool_use" (the model waits for
# tool results), "max_tokens" (cut at the output limit: a call in progress may have truncated arguments),
# "other" (refusal, content filter, anything new; ``StepEnd.raw`` has the vendor's word).
StopReason = Literal["end", "tool_use", "max_tokens", "other"]


@dataclass(frozen=True, slots=True)
class StepEnd:
    """The last event of a successful stream that offered tools.

    ``message`` is the assistant message of this step, ready to append to the conversation: its text, its
    calls (the same ``ToolCall``s the ``ToolCallReady`` events carried, in order) and any thinking blocks
    the vendor wants back. ``raw`` is the vendor's own stop reason, for logs.
    """

    reason: StopReason
    message: ChatMessage
    raw: str | None = None

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.message.tool_calls


ProviderEvent = TextDelta | ReasoningDelta | Usage | ToolCallStarted | ToolCallReady | StepEnd

# Events that put something in front of the user: after one, a retry would contradict it.
_OUTPUT_EVENTS = (TextDelta, ReasoningDelta, ToolCallStarted, ToolCallReady)


def decode_arguments(text: str) -> Mapping[str, Any] | str:
    """Streamed argument text as a JSON object when it is one; else the text itself, for the registry.

    Empty text is a call without arguments (providers stream nothing for ``{}``).
    """
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


def arguments_json(call: ToolCall) -> str:
    """A call's arguments as JSON text, as the model wrote them when they were never decoded."""
    return call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)


def stop_reason(reason: StopReason, calls: Sequence[ToolCall]) -> StopReason:
    """A finished step with calls is a tool-use step, whatever the server said (some say "stop")."""
    return "tool_use" if reason == "end" and calls else reason


class Provider(ABC):
    """A model backend: one streaming method plus capability flags."""

    name: str = "provider"  # set per instance for named endpoints (e.g. "ollama")
    can_stream: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = False
    needs_key: ClassVar[bool] = True

    def check_options(self, options: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Raise ``ValidationFailed`` for options this provider cannot take."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections."""

    @abstractmethod
    def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        """Stream the answer. Raise ``ProviderFailed`` on failure; closing the iterator closes upstream."""


async def stream_with_retries(
    provider: Provider, request: ProviderRequest, attempts: int = 3, backoff_s: float = 0.25
) -> AsyncGenerator[ProviderEvent, None]:
    """``provider.stream``, retried with exponential backoff on transient failures before any output.

    Once text, reasoning or a tool call has been sent, a failure is final: the client has seen it, so a
    retry would contradict what is already on screen.
    """
    for attempt in range(attempts):
        started = False
        stream = provider.stream(request)
        try:
            async for event in stream:
                started = started or isinstance(event, _OUTPUT_EVENTS)
                yield event
            return
        except ProviderFailed as exc:
            if started or not exc.retryable or attempt == attempts - 1:
                # The one log line of the final failure: its message names the endpoint and the cause.
                log.warning("provider %s failed (%s): %s", provider.name, exc.code, exc.message)
                raise
            log.info(
                "%s failed before any output (%s); retry %d of %d",
                provider.name,
                exc.code,
                attempt + 1,
                attempts - 1,
            )
        finally:
            await stream.aclose()
        await asyncio.sleep(backoff_s * 2**attempt)
