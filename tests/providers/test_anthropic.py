"""The Anthropic adapter, with the real SDK, against a fake Messages API over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from parley.errors import ProviderFailed, ValidationFailed
from parley.providers.anthropic import DEFAULT_MAX_TOKENS, AnthropicProvider
from parley.providers.base import (
    ChatMessage,
    ProviderEvent,
    ProviderRequest,
    ReasoningDelta,
    TextDelta,
    Usage,
    stream_with_retries,
)
from tests.providers.fake_anthropic import FakeAnthropic

KEY = "sk-ant-test-" + "k" * 32
MODEL = "claude-test-1"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    adapter = AnthropicProvider(api_key=KEY, base_url=fake.base_url, timeout_s=10)
    yield adapter
    await adapter.aclose()


def ask(prompt: str = "Hi", **kwargs: Any) -> ProviderRequest:
    return ProviderRequest(MODEL, [ChatMessage("user", prompt)], **kwargs)


async def collect(provider: AnthropicProvider, request: ProviderRequest | None = None) -> list[ProviderEvent]:
    async with asyncio.timeout(10):
        return [event async for event in provider.stream(request or ask())]


async def drain(stream: AsyncIterator[ProviderEvent], into: list[ProviderEvent]) -> None:
    async with asyncio.timeout(10):
        async for event in stream:
            into.append(event)


async def collect_until_failure(
    provider: AnthropicProvider, request: ProviderRequest | None = None
) -> tuple[list[ProviderEvent], ProviderFailed]:
    events: list[ProviderEvent] = []
    with pytest.raises(ProviderFailed) as failure:
        await drain(provider.stream(request or ask()), events)
    return events, failure.value


def texts(events: list[ProviderEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


# --- streaming -------------------------------------------------------------------------------------


async def test_text_deltas_in_order_and_usage(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.script(text_chunks=["Hel", "lo", ", world"], usage=(42, 7))
    events = await collect(provider)
    assert texts(events) == ["Hel", "lo", ", world"]
    usages = [e for e in events if isinstance(e, Usage)]
    assert usages[0] == Usage(input_tokens=42, output_tokens=1)  # message_start
    assert usages[-1] == Usage(input_tokens=42, output_tokens=7)  # message_delta, cumulative
    assert isinstance(events[0], Usage)  # message_start comes before any text
    sent = fake.headers[0]  # SDK 2.x sends the key as a bearer token; older ones as x-api-key
    assert sent.get("x-api-key") == KEY or sent.get("authorization") == f"Bearer {KEY}"


async def test_cached_input_counts_as_input(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.script(text_chunks=["cached"], usage=(42, 3), cache_read_tokens=1000)
    events = await collect(provider)
    assert events[0] == Usage(input_tokens=1042, output_tokens=1)  # all input read, as OpenAI counts it


@pytest.mark.parametrize(("cached", "total"), [(0, 11), (1000, 1011)])
async def test_input_counted_only_in_message_delta(
    fake: FakeAnthropic, provider: AnthropicProvider, cached: int, total: int
) -> None:
    """Behind a gateway message_start says 0 input tokens; message_delta has the real cumulative counts."""
    fake.script(text_chunks=["late"], usage=(11, 205), cache_read_tokens=cached, late_input=True)
    events = await collect(provider)
    usages = [e for e in events if isinstance(e, Usage)]
    assert usages[0] == Usage(input_tokens=0, output_tokens=1)
    assert usages[-1] == Usage(input_tokens=total, output_tokens=205)


async def test_thinking_deltas_become_reasoning(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.script(thinking_chunks=["Let me ", "think."], text_chunks=["Answer."])
    events = await collect(provider, ask(options={"thinking_budget": 2048}))
    kinds = [type(e).__name__ for e in events if not isinstance(e, Usage)]
    assert kinds == ["ReasoningDelta", "ReasoningDelta", "TextDelta"]  # the signature_delta is dropped
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == ["Let me ", "think."]
    assert texts(events) == ["Answer."]


async def test_request_body(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "first"),
        ChatMessage("user", "second"),
        ChatMessage("assistant", ""),
        ChatMessage("system", "Be kind."),
        ChatMessage("assistant", "reply"),
        ChatMessage("user", "third"),
    ]
    await collect(provider, ProviderRequest(MODEL, messages, temperature=0.3))
    body = fake.requests[0]
    assert body["model"] == MODEL
    assert body["stream"] is True
    assert body["system"] == "Be brief.\n\nBe kind."
    assert body["messages"] == [
        {"role": "user", "content": "first\n\nsecond"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "third"},
    ]
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS
    assert body["temperature"] == 0.3
    assert "thinking" not in body
    assert not {"top_p", "top_k", "stop_sequences"} & body.keys()


async def test_request_body_with_thinking_and_options(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    options = {"thinking_budget": 8000, "top_p": 0.97, "stop_sequences": ["END"]}
    await collect(provider, ask(max_tokens=1000, temperature=0.5, options=options))
    body = fake.requests[0]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8000}
    assert body["max_tokens"] == 8000 + DEFAULT_MAX_TOKENS  # raised above the budget
    assert "temperature" not in body  # the API takes none but 1 with thinking on
    assert body["top_p"] == 0.97
    assert body["stop_sequences"] == ["END"]
    assert "system" not in body

    await collect(provider, ask(max_tokens=20000, temperature=1.5, options={"thinking_budget": 1024}))
    assert fake.requests[1]["max_tokens"] == 20000  # already above the budget: kept
    await collect(provider, ask(max_tokens=50, temperature=1.5, options={"top_k": 5}))
    assert fake.requests[2]["temperature"] == 1.0  # Parley allows up to 2, Anthropic up to 1
    assert fake.requests[2]["top_k"] == 5
    assert fake.requests[2]["max_tokens"] == 50


# --- errors --------------------------------------------------------------------------------------


async def test_rate_limited(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.fail(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit")
    events, error = await collect_until_failure(provider)
    assert events == []
    assert error.code == "rate_limited"
    assert error.retryable


async def test_refused_key_is_not_echoed(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.fail(401, "authentication_error", "invalid x-api-key")
    _, error = await collect_until_failure(provider)
    assert error.code == "provider_error"
    assert not error.retryable
    assert "refused the API key" in error.message
    assert KEY not in error.message
    assert KEY[-8:] not in error.message


async def test_context_too_long(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.fail(400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum")
    _, error = await collect_until_failure(provider)
    assert error.code == "context_too_long"
    assert not error.retryable


async def test_overloaded_http_is_retryable(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.fail(529, "overloaded_error", "Overloaded")
    _, error = await collect_until_failure(provider)
    assert error.code == "provider_error"
    assert error.retryable
    assert "overloaded" in error.message.lower()
    assert len(fake.requests) == 1  # the SDK's own retries are off


async def test_error_event_mid_stream(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.error_after(2, text_chunks=["one ", "two ", "three "])
    events, error = await collect_until_failure(provider)
    assert texts(events) == ["one ", "two "]
    assert error.code == "provider_error"
    assert error.retryable  # worth a retry only before output: stream_with_retries decides
    assert "overloaded" in error.message.lower()


@pytest.mark.parametrize("abrupt", [False, True], ids=["body-ends", "connection-drops"])
async def test_cut_stream(fake: FakeAnthropic, provider: AnthropicProvider, abrupt: bool) -> None:
    fake.cut_after(2, text_chunks=["one ", "two ", "three "], abrupt=abrupt)
    events, error = await collect_until_failure(provider)
    assert texts(events) == ["one ", "two "]
    assert error.code == "provider_error"


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = AnthropicProvider(api_key=KEY, base_url=f"http://127.0.0.1:{port}", timeout_s=5)
    try:
        _, error = await collect_until_failure(adapter)
    finally:
        await adapter.aclose()
    assert error.retryable
    assert f"Could not reach Anthropic at 127.0.0.1:{port}: connection refused." == error.message


@pytest.mark.parametrize(
    ("error_type", "message", "code"),
    [
        ("api_error", "Internal server error", "provider_error"),
        ("rate_limit_error", "Slow down", "rate_limited"),
    ],
)
async def test_error_event_types_mid_stream(
    fake: FakeAnthropic, provider: AnthropicProvider, error_type: str, message: str, code: str
) -> None:
    """The SDK raises a bare APIStatusError carrying the stream's HTTP 200 for every `event: error`."""
    fake.error_after(1, error_type=error_type, message=message)
    _, error = await collect_until_failure(provider)
    assert (error.code, error.retryable) == (code, True)
    assert "HTTP 200" not in error.message
    assert error.message.startswith("Anthropic ")
    assert error.message.endswith(f": {message}")  # the vendor's own words, not the SDK's dict


async def test_error_event_of_a_named_endpoint_names_it(fake: FakeAnthropic) -> None:
    fake.error_after(0, error_type="overloaded_error", message="Overloaded")
    adapter = AnthropicProvider("gw", api_key=KEY, base_url=fake.base_url, timeout_s=10)
    try:
        _, error = await collect_until_failure(adapter)
    finally:
        await adapter.aclose()
    assert (error.code, error.retryable) == ("provider_error", True)
    assert error.message == "The model provider 'gw' is unavailable or overloaded (HTTP 529): Overloaded"


async def test_dropped_connection_is_retryable(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    """SDK 2.x reads through httpx2, whose RemoteProtocolError is no httpx.TransportError."""
    fake.cut_after(0, abrupt=True)
    _, error = await collect_until_failure(provider)
    assert error.retryable


# --- cancel ---------------------------------------------------------------------------------------


async def test_aclose_closes_the_upstream_stream(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.script(text_chunks=[f"w{i} " for i in range(200)], delay_s=0.05)
    stream = provider.stream(ask())
    received: list[str] = []
    async with asyncio.timeout(10):
        while len(received) < 2:
            event = await anext(stream)
            if isinstance(event, TextDelta):
                received.append(event.text)
        await stream.aclose()
    assert received == ["w0 ", "w1 "]
    await asyncio.wait_for(fake.client_disconnected.wait(), 2)


async def test_cancelled_task_closes_the_upstream_stream(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.script(text_chunks=[f"w{i} " for i in range(200)], delay_s=0.05)
    stream = provider.stream(ask())
    received: list[str] = []
    two = asyncio.Event()

    async def pump() -> None:  # like turn._pump: cancelled while it awaits the stream
        async for event in stream:
            if isinstance(event, TextDelta):
                received.append(event.text)
                if len(received) == 2:
                    two.set()

    task = asyncio.create_task(pump())
    await asyncio.wait_for(two.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    await stream.aclose()
    assert received[:2] == ["w0 ", "w1 "]
    await asyncio.wait_for(fake.client_disconnected.wait(), 2)


async def test_a_finished_stream_is_not_a_disconnect(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.script(text_chunks=["a", "b"])
    await collect(provider)
    await collect(provider)
    await asyncio.wait_for(fake.wait_streams_ended(2), 5)
    assert not fake.client_disconnected.is_set()


# --- retries (stream_with_retries over this provider) --------------------------------------------------


async def retried(provider: AnthropicProvider) -> list[ProviderEvent]:
    async with asyncio.timeout(10):
        return [e async for e in stream_with_retries(provider, ask(), attempts=3, backoff_s=0.01)]


async def test_overloaded_then_success_is_retried_once(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.fail(529, "overloaded_error", "Overloaded")
    fake.script(text_chunks=["after ", "retry"])
    events = await retried(provider)
    assert texts(events) == ["after ", "retry"]
    assert len(fake.requests) == 2


async def test_error_event_before_any_text_is_retried(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.error_after(0)
    fake.script(text_chunks=["ok"])
    assert texts(await retried(provider)) == ["ok"]
    assert len(fake.requests) == 2


async def test_error_event_after_text_is_not_retried(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.error_after(2, text_chunks=["one ", "two ", "three "])
    events: list[ProviderEvent] = []
    with pytest.raises(ProviderFailed) as failure:
        await drain(stream_with_retries(provider, ask(), attempts=3, backoff_s=0.01), events)
    assert texts(events) == ["one ", "two "]
    assert failure.value.retryable
    assert len(fake.requests) == 1


# --- options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"thinking_budget": "x"}, "thinking_budget"),
        ({"thinking_budget": 500}, "thinking_budget"),
        ({"thinking_budget": True}, "thinking_budget"),
        ({"thinking_budget": 2048.0}, "thinking_budget"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": "0.9"}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"stop_sequences": ["ok", ""]}, "stop_sequences"),
        ({"thinking_budget": 2048, "top_k": 5}, "top_k"),
        ({"thinking_budget": 2048, "top_p": 0.5}, "top_p"),
    ],
)
async def test_check_options_rejects(
    provider: AnthropicProvider, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValidationFailed) as refused:
        provider.check_options(options)
    assert f"options.{named} " in refused.value.message
    assert refused.value.code == "invalid_request"


@pytest.mark.parametrize(
    "options",
    [{}, {"thinking_budget": 1024}, {"top_p": 0.9, "top_k": 40, "stop_sequences": ["END"]}, {"unrelated": 1}],
)
async def test_check_options_accepts(provider: AnthropicProvider, options: dict[str, Any]) -> None:
    provider.check_options(options)
