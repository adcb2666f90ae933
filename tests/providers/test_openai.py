"""The OpenAI adapter, with the real SDK, against a fake Chat Completions server: real HTTP on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from parley.errors import ProviderFailed, ValidationFailed
from parley.providers.base import (
    ChatMessage,
    ProviderEvent,
    ProviderRequest,
    ReasoningDelta,
    TextDelta,
    Usage,
    stream_with_retries,
)
from parley.providers.errors import classify
from parley.providers.openai import NO_KEY, OpenAIProvider
from tests.providers.fake_openai import FakeOpenAI, error_body

KEY = "sk-test-" + "k" * 40
MODEL = "gpt-test-1"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def offline() -> AsyncIterator[OpenAIProvider]:
    """An adapter for tests that make no request (pointed at a closed loopback port, to be sure)."""
    adapter = OpenAIProvider(api_key=KEY, base_url=f"http://127.0.0.1:{closed_port()}/v1")
    yield adapter
    await adapter.aclose()


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    adapter = OpenAIProvider(api_key=KEY, base_url=fake.base_url, timeout_s=10)
    yield adapter
    await adapter.aclose()


def ask(prompt: str = "Hi", model: str = MODEL, **kwargs: Any) -> ProviderRequest:
    return ProviderRequest(model, [ChatMessage("user", prompt)], **kwargs)


async def collect(provider: OpenAIProvider, request: ProviderRequest | None = None) -> list[ProviderEvent]:
    async with asyncio.timeout(10):
        return [event async for event in provider.stream(request or ask())]


async def drain(stream: AsyncIterator[ProviderEvent], into: list[ProviderEvent]) -> None:
    async with asyncio.timeout(10):
        async for event in stream:
            into.append(event)


async def collect_until_failure(
    provider: OpenAIProvider, request: ProviderRequest | None = None
) -> tuple[list[ProviderEvent], ProviderFailed]:
    events: list[ProviderEvent] = []
    with pytest.raises(ProviderFailed) as failure:
        await drain(provider.stream(request or ask()), events)
    return events, failure.value


def texts(events: list[ProviderEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


def closed_port() -> int:
    """A port that was free a moment ago and has no listener now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- streaming -------------------------------------------------------------------------------------


async def test_text_deltas_in_order_then_usage(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.script(text_chunks=["Hel", "lo", ", world"], usage=(42, 7))
    events = await collect(provider)
    assert events == [TextDelta("Hel"), TextDelta("lo"), TextDelta(", world"), Usage(42, 7)]
    assert fake.headers[0]["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_deltas(fake: FakeOpenAI, provider: OpenAIProvider, field: str) -> None:
    fake.script(reasoning_chunks=["Let me ", "think."], reasoning_field=field, text_chunks=["Answer."])
    events = await collect(provider)
    assert events[:3] == [ReasoningDelta("Let me "), ReasoningDelta("think."), TextDelta("Answer.")]


async def test_refusal_is_shown_as_text(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.script(text_chunks=[], refusal_chunks=["I can't ", "help with that."])
    assert texts(await collect(provider)) == ["I can't ", "help with that."]


async def test_length_finish_is_a_normal_end(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.script(text_chunks=["cut ", "short"], finish_reason="length")
    assert texts(await collect(provider, ask(max_tokens=2))) == ["cut ", "short"]


async def test_request_body(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "first"),
        ChatMessage("assistant", ""),
        ChatMessage("assistant", "reply"),
        ChatMessage("user", "second"),
    ]
    await collect(provider, ProviderRequest(MODEL, messages, temperature=0.3, max_tokens=100))
    body = fake.requests[0]
    assert body["model"] == MODEL
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},  # the empty one is dropped
        {"role": "user", "content": "second"},
    ]
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 100
    assert "max_completion_tokens" not in body


async def test_request_body_leaves_out_unset_settings(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    await collect(provider, ask(options={"unrelated": 1, "top_p": None}))
    body = fake.requests[0]
    assert set(body) == {"model", "messages", "stream", "stream_options"}


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini"])
async def test_reasoning_models_get_max_completion_tokens(
    fake: FakeOpenAI, provider: OpenAIProvider, model: str
) -> None:
    await collect(provider, ask(model=model, max_tokens=500, temperature=0.3))
    body = fake.requests[0]
    assert body["max_completion_tokens"] == 500
    assert "max_tokens" not in body
    assert "temperature" not in body  # reasoning models refuse any but their default


async def test_options_pass_through(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    options = {
        "reasoning_effort": "low",
        "top_p": 0.9,
        "seed": 7,
        "stop": ["END", "STOP"],
        "presence_penalty": -0.5,
        "frequency_penalty": 1,
        "unrelated": "ignored",
    }
    provider.check_options(options)
    await collect(provider, ask(options=options))
    body = fake.requests[0]
    assert {key: body[key] for key in options if key in body} == {
        key: value for key, value in options.items() if key != "unrelated"
    }
    await collect(provider, ask(options={"stop": "END"}))
    assert fake.requests[1]["stop"] == "END"


async def test_keyless_server_gets_a_placeholder_never_the_environment_key(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    adapter = OpenAIProvider("ollama", api_key=None, base_url=fake.base_url, headers={"X-Title": "Parley"})
    try:
        assert texts(await collect(adapter)) == ["Hello", " from", " the fake."]
    finally:
        await adapter.aclose()
    assert fake.headers[0]["authorization"] == f"Bearer {NO_KEY}"
    assert fake.headers[0]["x-title"] == "Parley"


# --- errors --------------------------------------------------------------------------------------


async def test_rate_limited(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.fail(429)
    events, error = await collect_until_failure(provider)
    assert events == []
    assert (error.code, error.retryable) == ("rate_limited", True)
    assert len(fake.requests) == 1  # the SDK's own retries are off


async def test_refused_key_is_not_echoed(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    message = f"Incorrect API key provided: {KEY}. You can find your API key at https://example.invalid."
    fake.fail(401, error_body(message, "invalid_request_error", "invalid_api_key"))
    _, error = await collect_until_failure(provider)
    assert (error.code, error.retryable) == ("provider_error", False)
    assert "refused the API key" in error.message
    assert KEY not in error.message
    assert KEY[-8:] not in error.message


async def test_context_too_long(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    message = (
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000."
    )
    fake.fail(400, error_body(message, "invalid_request_error", "context_length_exceeded"))
    _, error = await collect_until_failure(provider)
    assert (error.code, error.retryable) == ("context_too_long", False)


async def test_other_bad_request_is_final(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.fail(400, error_body("Unsupported parameter: 'max_tokens'.", "invalid_request_error", None))
    _, error = await collect_until_failure(provider)
    assert (error.code, error.retryable) == ("provider_error", False)
    assert "HTTP 400" in error.message


async def test_server_error_is_retryable(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.fail(500)
    _, error = await collect_until_failure(provider)
    assert (error.code, error.retryable) == ("provider_error", True)
    assert len(fake.requests) == 1


async def test_connection_refused_is_retryable() -> None:
    adapter = OpenAIProvider(api_key=KEY, base_url=f"http://127.0.0.1:{closed_port()}/v1", timeout_s=5)
    try:
        _, error = await collect_until_failure(adapter)
    finally:
        await adapter.aclose()
    assert (error.code, error.retryable) == ("provider_error", True)
    assert "Could not reach OpenAI" in error.message


async def test_unreachable_endpoint_is_named_with_its_cause() -> None:
    port = closed_port()
    adapter = OpenAIProvider("local", api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", timeout_s=5)
    try:
        _, error = await collect_until_failure(adapter)
    finally:
        await adapter.aclose()
    expected = f"Could not reach the model provider 'local' at 127.0.0.1:{port}: connection refused."
    assert error.message == expected


async def test_tls_to_a_plain_http_server_says_tls(fake: FakeOpenAI) -> None:
    url = fake.base_url.replace("http://", "https://")
    adapter = OpenAIProvider(api_key=KEY, base_url=url, timeout_s=5)
    try:
        _, error = await collect_until_failure(adapter)
    finally:
        await adapter.aclose()
    host = url.split("//")[1].split("/")[0]
    assert f"Could not reach OpenAI at {host}: TLS handshake failed" in error.message
    assert error.retryable


def test_a_name_that_does_not_resolve_says_dns() -> None:
    request = httpx.Request("POST", "https://llm.example.invalid/v1/chat/completions")
    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as dns:
            raise httpx.ConnectError(str(dns), request=request) from dns
    except httpx.ConnectError as exc:
        error = classify(exc, "openai")
    assert error.message == (
        "Could not reach OpenAI at llm.example.invalid:443: the host name does not resolve (DNS)."
    )


async def test_the_final_failure_is_one_warning_naming_provider_host_and_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = closed_port()
    adapter = OpenAIProvider("local", api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", timeout_s=5)
    caplog.set_level(logging.INFO, logger="parley.providers")
    try:
        with pytest.raises(ProviderFailed):
            await drain(stream_with_retries(adapter, ask(), attempts=3, backoff_s=0), [])
    finally:
        await adapter.aclose()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    line = warnings[0].getMessage()
    assert "local" in line and f"127.0.0.1:{port}" in line and "connection refused" in line
    retries = [r for r in caplog.records if r.levelno == logging.INFO and "retry" in r.getMessage()]
    assert len(retries) == 2


async def test_silent_server_times_out(fake: FakeOpenAI) -> None:
    fake.script(text_chunks=["late"], delay_s=5)
    adapter = OpenAIProvider(api_key=KEY, base_url=fake.base_url, timeout_s=0.3)
    try:
        _, error = await collect_until_failure(adapter)
    finally:
        await adapter.aclose()
    assert (error.code, error.retryable) == ("provider_error", True)
    host = fake.base_url.split("//")[1].split("/")[0]
    assert f"OpenAI at {host} did not answer in time" in error.message


async def test_stream_ended_early(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.cut_after(2, text_chunks=["one ", "two ", "three "])
    events, error = await collect_until_failure(provider)
    assert texts(events) == ["one ", "two "]
    assert error.code == "provider_error"
    assert "ended early" in error.message


async def test_dropped_connection_mid_stream(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.cut_after(2, text_chunks=["one ", "two ", "three "], abrupt=True)
    events, error = await collect_until_failure(provider)
    assert texts(events) == ["one ", "two "]
    assert (error.code, error.retryable) == ("provider_error", True)


async def test_error_event_mid_stream(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.error_after(2)
    events, error = await collect_until_failure(provider)
    assert texts(events) == ["one ", "two "]
    assert error.code == "provider_error"


async def test_context_error_event_mid_stream(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.error_after(0, error_body("maximum context length exceeded", "invalid_request_error", None))
    _, error = await collect_until_failure(provider)
    assert error.code == "context_too_long"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (error_body("The server had an error.", "server_error", None), "provider_error"),
        (error_body("Rate limit reached.", "requests", "rate_limit_exceeded"), "rate_limited"),
        ({"error": {"message": "Provider returned error", "code": 502}}, "provider_error"),  # OpenRouter
    ],
)
async def test_transient_error_events_mid_stream_are_retryable(
    fake: FakeOpenAI, provider: OpenAIProvider, error: dict[str, Any], code: str
) -> None:
    """The SDK raises a bare ``APIError`` (no ``status_code``) for a ``data: {"error": ...}`` event."""
    fake.error_after(0, error)
    _, error_ = await collect_until_failure(provider)
    assert (error_.code, error_.retryable) == (code, True)


LITELLM_RATE_LIMIT = (
    "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for gpt-4o on tokens per "
    "min (TPM): Limit 30000, Used 29000, Requested 2000."
)


async def test_gateway_rate_limit_event_names_the_gateway_and_its_message(fake: FakeOpenAI) -> None:
    """LiteLLM's in-stream rate limit: the status as a string `code`, its own `type` name."""
    error = {
        "error": {"message": LITELLM_RATE_LIMIT, "type": "throttling_error", "param": None, "code": "429"}
    }
    fake.error_after(0, error)
    adapter = OpenAIProvider("gw", api_key=KEY, base_url=fake.base_url, timeout_s=10)
    try:
        _, failure = await collect_until_failure(adapter)
    finally:
        await adapter.aclose()
    assert (failure.code, failure.retryable) == ("rate_limited", True)
    assert failure.message == f"The model provider 'gw' is rate limiting requests: {LITELLM_RATE_LIMIT}"


@pytest.mark.parametrize(
    ("error", "code", "retryable", "said"),
    [
        (
            {"message": "litellm.ServiceUnavailableError: upstream down", "type": None, "code": "503"},
            "provider_error",
            True,
            "(HTTP 503): litellm.ServiceUnavailableError: upstream down",
        ),
        ({"message": "Slow down", "type": "rate_limit_error"}, "rate_limited", True, ": Slow down"),
        ({"message": "Overloaded", "type": "overloaded_error"}, "provider_error", True, ": Overloaded"),
        ({"message": "No capacity", "type": "service_unavailable"}, "provider_error", True, "(HTTP 503)"),
        ({"message": "Quota", "status": "RESOURCE_EXHAUSTED"}, "rate_limited", True, ": Quota"),
        ({"message": "Try later", "status": 503}, "provider_error", True, "(HTTP 503): Try later"),
        ({"message": "Too many", "code": 429}, "rate_limited", True, ": Too many"),
        (
            {"message": "litellm.RateLimitError: no deployments", "type": "None", "code": "None"},
            "rate_limited",
            True,
            ": litellm.RateLimitError: no deployments",
        ),
        ({"message": "Provider disconnected", "code": "server_error"}, "provider_error", True, "(HTTP 500)"),
        (
            {"message": "max_tokens is too large", "type": "BadRequestError", "code": 400},  # vLLM
            "provider_error",
            False,
            "rejected the request (HTTP 400): max_tokens is too large",
        ),
        ({"message": "Web server is down", "code": 520}, "provider_error", True, "(HTTP 520)"),  # Cloudflare
        ({"message": "Something odd"}, "provider_error", False, "reported an error: Something odd"),
    ],
)
async def test_error_event_forms_gateways_use(
    fake: FakeOpenAI, provider: OpenAIProvider, error: dict[str, Any], code: str, retryable: bool, said: str
) -> None:
    fake.error_after(0, {"error": error})
    _, failure = await collect_until_failure(provider)
    assert (failure.code, failure.retryable) == (code, retryable)
    assert failure.message.startswith("OpenAI ")
    assert said in failure.message


async def test_error_event_that_is_only_a_string(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """``{"error": "…"}``: the SDK raises APIError with the string as its body."""
    fake.error_after(0, {"error": "Rate limit exceeded, retry in 2s"})
    _, failure = await collect_until_failure(provider)
    assert (failure.code, failure.retryable) == ("rate_limited", True)
    assert failure.message == "OpenAI is rate limiting requests: Rate limit exceeded, retry in 2s"


async def test_gateway_message_is_cleaned_and_cut_short(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    token = "AbC123" * 8
    message = (
        f"Upstream said:\nInvalid key {KEY}\x00 for https://user:pw@gw.example/v1?api_key=abc&x=1 "
        f"(Authorization: Bearer {token}) " + "more detail " * 100
    )
    fake.error_after(0, {"error": {"message": message, "code": "502"}})
    _, failure = await collect_until_failure(provider)
    assert (failure.code, failure.retryable) == ("provider_error", True)
    assert failure.message.startswith(
        "OpenAI is unavailable or overloaded (HTTP 502): Upstream said: Invalid"
    )
    for secret in (KEY, KEY[-12:], "pw@", "abc&", token, "\n", "\x00"):
        assert secret not in failure.message
    assert "gw.example" in failure.message
    assert len(failure.message) < 400
    assert failure.message.endswith("…")


async def test_http_error_carries_the_vendor_message(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.fail(400, error_body("Unsupported parameter: 'max_tokens'.", "invalid_request_error", None))
    _, failure = await collect_until_failure(provider)
    assert failure.message == "OpenAI rejected the request (HTTP 400): Unsupported parameter: 'max_tokens'."


# --- cancel ---------------------------------------------------------------------------------------


async def test_aclose_closes_the_upstream_stream(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
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


async def test_cancelled_task_closes_the_upstream_stream(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
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
    await asyncio.wait_for(fake.client_disconnected.wait(), 2)  # before aclose(): the cancel alone did it
    await stream.aclose()
    assert received[:2] == ["w0 ", "w1 "]


async def test_a_finished_stream_is_not_a_disconnect(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.script(text_chunks=["a", "b"])
    await collect(provider)
    await collect(provider)
    await asyncio.wait_for(fake.wait_streams_ended(2), 5)
    assert not fake.client_disconnected.is_set()


# --- retries (stream_with_retries over this provider) --------------------------------------------------


async def test_server_error_then_success_is_retried_once(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.fail(500)
    fake.script(text_chunks=["after ", "retry"])
    async with asyncio.timeout(10):
        events = [e async for e in stream_with_retries(provider, ask(), attempts=3, backoff_s=0.01)]
    assert texts(events) == ["after ", "retry"]
    assert len(fake.requests) == 2


async def test_failure_after_text_is_not_retried(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.cut_after(2, text_chunks=["one ", "two ", "three "], abrupt=True)
    fake.script(text_chunks=["never"])
    events: list[ProviderEvent] = []
    with pytest.raises(ProviderFailed) as failure:
        await drain(stream_with_retries(provider, ask(), attempts=3, backoff_s=0.01), events)
    assert texts(events) == ["one ", "two "]
    assert failure.value.retryable  # retryable in itself; not retried because text was already sent
    assert len(fake.requests) == 1


# --- options and lifecycle -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"reasoning_effort": 3}, "reasoning_effort"),
        ({"reasoning_effort": ""}, "reasoning_effort"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": "0.9"}, "top_p"),
        ({"top_p": True}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"seed": False}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"stop": ""}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"stop": []}, "stop"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"stop": 5}, "stop"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": "high"}, "frequency_penalty"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty"),
    ],
)
async def test_check_options_rejects(offline: OpenAIProvider, options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        offline.check_options(options)
    assert f"options.{named} " in refused.value.message
    assert refused.value.code == "invalid_request"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"unrelated": object()},
        {"top_p": None},
        {"reasoning_effort": "high", "top_p": 0, "seed": -1, "stop": "END"},
        {"presence_penalty": -2, "frequency_penalty": 2.0, "stop": ["a", "b", "c", "d"]},
    ],
)
async def test_check_options_accepts(offline: OpenAIProvider, options: dict[str, Any]) -> None:
    offline.check_options(options)


async def test_invalid_options_are_not_sent(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """Should a request skip check_options, a bad value is left out rather than sent upstream."""
    await collect(provider, ask(options={"top_p": "high", "seed": True}))
    assert not {"top_p", "seed"} & fake.requests[0].keys()


async def test_capabilities_and_name(offline: OpenAIProvider) -> None:
    assert (offline.supports_tools, offline.needs_key, offline.can_stream) == (True, True, True)
    assert offline.name == "openai"
    named = OpenAIProvider("groq", api_key=KEY, base_url=f"http://127.0.0.1:{closed_port()}/v1")
    assert named.name == "groq"
    await named.aclose()
