"""Anthropic's Messages API, streamed through the official SDK's raw event stream.

Options (``user_settings.text.options``): ``thinking_budget`` (int ≥ 1024: extended thinking, streamed as
reasoning), ``top_p`` (0–1), ``top_k`` (int ≥ 1), ``stop_sequences`` (list of non-empty strings).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

from anthropic import AsyncAnthropic, AsyncStream, omit
from anthropic import types as wire

from parley.errors import ProviderFailed, ValidationFailed
from parley.providers.base import Provider, ProviderEvent, ProviderRequest, ReasoningDelta, TextDelta, Usage
from parley.providers.errors import DISPLAY_NAMES, provider_errors

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


def _merged_turns(request: ProviderRequest) -> tuple[str, list[wire.MessageParam]]:
    """System text apart; the rest with empty messages dropped and same-role neighbours merged."""
    system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)
    turns: list[tuple[str, list[str]]] = []
    for message in request.messages:
        if message.role == "system" or not message.content:
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if turns and turns[-1][0] == role:
            turns[-1][1].append(message.content)
        else:
            turns.append((role, [message.content]))
    messages: list[wire.MessageParam] = [
        {"role": "assistant", "content": "\n\n".join(parts)}
        if role == "assistant"
        else {"role": "user", "content": "\n\n".join(parts)}
        for role, parts in turns
    ]
    return system, messages


def _mapped(event: wire.RawMessageStreamEvent) -> ProviderEvent | None:
    """The Parley event for one wire event; None for the ones Parley has no use for."""
    if isinstance(event, wire.RawContentBlockDeltaEvent):
        if isinstance(event.delta, wire.TextDelta):
            return TextDelta(event.delta.text)
        if isinstance(event.delta, wire.ThinkingDelta):
            return ReasoningDelta(event.delta.thinking)
        return None  # signature_delta, input_json_delta, citations_delta
    if isinstance(event, wire.RawMessageStartEvent):
        usage = event.message.usage
        cached = (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
        return Usage(input_tokens=usage.input_tokens + cached, output_tokens=usage.output_tokens)
    if isinstance(event, wire.RawMessageDeltaEvent):
        return Usage(output_tokens=event.usage.output_tokens)  # cumulative
    return None


class AnthropicProvider(Provider):
    """Claude models over the Messages API. SDK retries are off: Parley retries before the first token."""

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
        finished = False
        try:
            with provider_errors(self.name):
                events = await self._client.messages.create(
                    model=request.model,
                    max_tokens=max_tokens,
                    messages=messages,
                    system=system or omit,
                    thinking=thinking or omit,
                    stop_sequences=stop_sequences or omit,
                    extra_body=extra or None,
                    stream=True,
                )
                async for event in events:
                    if isinstance(event, wire.RawMessageStopEvent):
                        finished = True
                        break
                    if (mapped := _mapped(event)) is not None:
                        yield mapped
        finally:
            if events is not None:
                await events.close()  # releases the HTTP response at once, also on aclose() or cancel
        if not finished:
            name = DISPLAY_NAMES.get(self.name, self.name)
            message = f"{name}'s stream ended early, before the answer was complete."
            raise ProviderFailed(message, retryable=True)
