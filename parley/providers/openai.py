"""OpenAI's Chat Completions API, streamed through the official SDK: OpenAI and every compatible server.

Options (``user_settings.text.options``): ``reasoning_effort`` (string), ``top_p`` (0–1), ``seed`` (int),
``stop`` (string or list of strings), ``presence_penalty`` and ``frequency_penalty`` (-2–2). Others are
ignored. Reasoning arrives as ``delta.reasoning_content`` (DeepSeek, vLLM, llama.cpp) or ``delta.reasoning``
(OpenRouter, Ollama): fields the SDK does not declare, so they are read from the delta's extras.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.chat.chat_completion_chunk import ChoiceDelta

from parley.errors import ProviderFailed, ValidationFailed
from parley.providers.base import Provider, ProviderEvent, ProviderRequest, ReasoningDelta, TextDelta, Usage
from parley.providers.errors import DISPLAY_NAMES, provider_errors

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
    """The conversation in order; empty messages dropped (some servers refuse them)."""
    messages: list[ChatCompletionMessageParam] = []
    for m in request.messages:
        if not m.content:
            continue
        if m.role == "system":
            messages.append({"role": "system", "content": m.content})
        elif m.role == "assistant":
            messages.append({"role": "assistant", "content": m.content})
        else:
            messages.append({"role": "user", "content": m.content})
    return messages


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


def _events(chunk: ChatCompletionChunk) -> list[ProviderEvent]:
    """The Parley events in one chunk: the first choice's deltas, then usage (sent with no choices)."""
    events: list[ProviderEvent] = []
    for choice in (chunk.choices or [])[:1]:
        if reasoning := _reasoning(choice.delta):
            events.append(ReasoningDelta(reasoning))
        if text := choice.delta.content or choice.delta.refusal:
            events.append(TextDelta(text))
    if chunk.usage is not None:
        events.append(Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens))
    return events


class OpenAIProvider(Provider):
    """Chat Completions, streamed. SDK retries are off: Parley retries before the first token itself."""

    supports_tools = False
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
        finished = False
        with provider_errors(self.name):
            # The context manager closes the HTTP response at once, also on aclose() or cancellation.
            async with await self._client.chat.completions.create(
                model=request.model,
                messages=_messages(request),
                stream=True,
                stream_options={"include_usage": True},
                extra_body=_body(request) or None,
            ) as chunks:
                async for chunk in chunks:
                    for event in _events(chunk):
                        yield event
                    finished = finished or any(choice.finish_reason for choice in chunk.choices or [])
        if not finished:
            name = DISPLAY_NAMES.get(self.name, self.name)
            raise ProviderFailed(
                f"{name}'s stream ended early, before the answer was complete.", retryable=True
            )
