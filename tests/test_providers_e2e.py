"""Real providers end to end: Parley (not in dev mode) → the vendor's SDK → a local fake of the vendor's API.

A turn against a real model must behave exactly like one against `demo`: same events, same invariants,
same persistence — and every provider failure shows up as PROTOCOL events and stored fields.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from parley.providers.base import ChatMessage, ProviderRequest
from parley.providers.registry import BUILTIN, Endpoint, build_provider
from tests.conftest import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY, LiveServer, live_server, make_settings
from tests.providers.fake_anthropic import FakeAnthropic
from tests.providers.fake_openai import FakeOpenAI

MANUAL_SCRIPT = Path(__file__).parent / "manual" / "test_session_persistence_manual.py"


async def test_claude_turns_keep_the_session_reasoning_and_usage(
    claude_server: LiveServer, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(
        text_chunks=["Hello", " there."], thinking_chunks=["Let me ", "think."], usage=(12, 7)
    )
    fake_anthropic.script(text_chunks=["Again", "!"], usage=(30, 2))
    async with await claude_server.client() as client:
        first = await client.turn(await client.chat("Hi Claude", model="claude-mini"))
        second = await client.turn(
            await client.chat("And again", model="claude-mini", session_id=first.session_id or "")
        )

    assert first.events[0]["content"]["provider"] == "anthropic"
    assert first.kinds == [
        "working",
        "reasoning",
        "reasoning",
        "text",
        "text",
        "dbOperationExecuted",
        "fullProcessComplete",
    ]
    assert (first.status, first.text, first.usage) == (
        "completed",
        "Hello there.",
        {"input_tokens": 12, "output_tokens": 7},
    )
    assert second.session_id == first.session_id
    assert fake_anthropic.requests[0]["model"] == "claude-haiku-5-5"  # the alias, resolved upstream
    assert fake_anthropic.requests[1]["messages"] == [
        {"role": "user", "content": "Hi Claude"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "And again"},
    ]
    rows = await claude_server.store.session_messages(uuid.UUID(first.session_id or ""))
    answer = rows[1]
    assert (answer.content, answer.reasoning, answer.status) == ("Hello there.", "Let me think.", "completed")
    assert (answer.model, answer.provider, answer.usage) == (
        "claude-mini",
        "anthropic",
        {"input_tokens": 12, "output_tokens": 7},
    )


@pytest.mark.parametrize(
    ("status", "error_type", "message", "code", "attempts"),
    [
        (429, "rate_limit_error", "Number of requests exceeded", "rate_limited", 3),
        (401, "authentication_error", "invalid x-api-key", "provider_error", 1),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 250000 tokens > 200000 maximum",
            "context_too_long",
            1,
        ),
        (529, "overloaded_error", "Overloaded", "provider_error", 3),
    ],
)
async def test_http_failures_become_protocol_errors(
    claude_server: LiveServer,
    fake_anthropic: FakeAnthropic,
    status: int,
    error_type: str,
    message: str,
    code: str,
    attempts: int,
) -> None:
    fake_anthropic.fail(status, error_type, message)
    async with await claude_server.client() as client:
        summary = await client.turn(await client.chat("Hi", model="claude-sonnet-5-5"))
    assert summary.status == "error"
    assert summary.error is not None
    assert (summary.error["stage"], summary.error["code"]) == ("provider", code)
    assert ANTHROPIC_TEST_KEY not in summary.error["content"]
    if status == 401:
        assert "key" in summary.error["content"].lower()
    assert len(fake_anthropic.requests) == attempts  # transient failures retried before the first token
    rows = await claude_server.store.session_messages(uuid.UUID(summary.session_id or ""))
    assert (rows[1].status, rows[1].content, rows[1].error_code) == ("error", "", code)


async def test_mid_stream_error_keeps_the_partial_answer_and_is_not_retried(
    claude_server: LiveServer, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.error_after(2, text_chunks=["one ", "two ", "three"])
    async with await claude_server.client() as client:
        summary = await client.turn(await client.chat("Hi", model="claude-sonnet-5-5"))
    assert summary.status == "error"
    assert summary.error is not None
    assert summary.error["stage"] == "provider"
    assert summary.text == "one two "
    assert len(fake_anthropic.requests) == 1
    rows = await claude_server.store.session_messages(uuid.UUID(summary.session_id or ""))
    assert (rows[1].status, rows[1].content) == ("error", "one two ")


async def test_cancel_closes_the_upstream_stream_and_keeps_usage(
    claude_server: LiveServer, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(text_chunks=[f"w{i} " for i in range(200)], delay_s=0.05, usage=(21, 200))
    async with await claude_server.client() as client:
        rid = await client.chat("Tell me a long story", model="claude-sonnet-5-5")
        await client.wait_for(rid, "text")
        await client.send({"type": "cancel", "request_id": rid})
        summary = await client.turn(rid)
    assert summary.status == "cancelled"
    await asyncio.wait_for(fake_anthropic.client_disconnected.wait(), 2)
    assert summary.usage is not None
    assert summary.usage["input_tokens"] == 21
    rows = await claude_server.store.session_messages(uuid.UUID(summary.session_id or ""))
    assert (rows[1].status, rows[1].content) == ("cancelled", summary.text)


async def test_claude_without_a_key_is_not_configured(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path)) as server, await server.client() as client:
        summary = await client.turn(await client.chat("Hi", model="claude-mini"))
    assert summary.error is not None
    assert (summary.error["stage"], summary.error["code"]) == ("validation", "provider_not_configured")
    assert "ANTHROPIC_API_KEY" in summary.error["content"]


async def test_manual_session_check_passes_against_claude(
    claude_server: LiveServer, fake_anthropic: FakeAnthropic
) -> None:
    """The first user's own manual script, unchanged, against a non-dev Parley backed by 'Anthropic'."""
    fake_anthropic.script(text_chunks=["Hi", " from", " Claude."])
    await run_manual_check(claude_server, "claude-mini")


async def run_manual_check(server: LiveServer, model: str) -> None:
    env = {
        "JWT_TOKEN": server.token(),
        "BACKEND_WS_URL": server.ws_url,
        "CHAT_MODEL": model,
        "EVENT_TIMEOUT": "10",
        "PATH": "/usr/bin:/bin",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(MANUAL_SCRIPT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    text = output.decode()
    assert process.returncode == 0, text
    assert "✅ TEST PASSED" in text


# -- OpenAI (and every OpenAI-compatible server) -----------------------------------------------------


async def test_gpt_turns_keep_the_session_reasoning_and_usage(
    gpt_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(text_chunks=["Hi", " you."], reasoning_chunks=["Hmm", "."], usage=(9, 4))
    fake_openai.script(text_chunks=["Sure."], usage=(20, 1))
    async with await gpt_server.client() as client:
        first = await client.turn(
            await client.chat("Hello GPT", model="gpt-4o-mini", system_prompt="Be brief.")
        )
        second = await client.turn(
            await client.chat("More", model="gpt-4o-mini", session_id=first.session_id or "")
        )
    assert first.events[0]["content"]["provider"] == "openai"
    assert first.kinds == [
        "working",
        "reasoning",
        "reasoning",
        "text",
        "text",
        "dbOperationExecuted",
        "fullProcessComplete",
    ]
    assert (first.text, first.usage) == ("Hi you.", {"input_tokens": 9, "output_tokens": 4})
    assert second.session_id == first.session_id
    request = fake_openai.requests[1]
    assert request["model"] == "gpt-4o-mini"
    assert request["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in request["messages"]] == ["user", "assistant", "user"]
    assert fake_openai.requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    rows = await gpt_server.store.session_messages(uuid.UUID(first.session_id or ""))
    assert (rows[1].content, rows[1].reasoning, rows[1].usage) == (
        "Hi you.",
        "Hmm.",
        {"input_tokens": 9, "output_tokens": 4},
    )


@pytest.mark.parametrize(
    ("status", "body", "code", "attempts"),
    [
        (429, None, "rate_limited", 3),
        (401, None, "provider_error", 1),
        (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 128000 tokens.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
            "context_too_long",
            1,
        ),
        (500, None, "provider_error", 3),
    ],
)
async def test_gpt_http_failures_become_protocol_errors(
    gpt_server: LiveServer,
    fake_openai: FakeOpenAI,
    status: int,
    body: dict[str, Any] | None,
    code: str,
    attempts: int,
) -> None:
    fake_openai.fail(status, body)
    async with await gpt_server.client() as client:
        summary = await client.turn(await client.chat("Hi", model="gpt-4o-mini"))
    assert summary.error is not None
    assert (summary.error["stage"], summary.error["code"]) == ("provider", code)
    assert OPENAI_TEST_KEY not in summary.error["content"]
    assert len(fake_openai.requests) == attempts
    rows = await gpt_server.store.session_messages(uuid.UUID(summary.session_id or ""))
    assert (rows[1].status, rows[1].error_code) == ("error", code)


async def test_gpt_stream_ending_early_keeps_the_partial_answer(
    gpt_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.cut_after(2, text_chunks=["one ", "two ", "three "])
    async with await gpt_server.client() as client:
        summary = await client.turn(await client.chat("Hi", model="gpt-4o-mini"))
    assert summary.error is not None
    assert summary.error["stage"] == "provider"
    assert "ended early" in summary.error["content"]
    assert summary.text == "one two "
    assert len(fake_openai.requests) == 1  # text was sent: never retried


async def test_gpt_cancel_closes_the_upstream_stream(gpt_server: LiveServer, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(text_chunks=[f"w{i} " for i in range(200)], delay_s=0.05)
    async with await gpt_server.client() as client:
        rid = await client.chat("Long story please", model="gpt-4o-mini")
        await client.wait_for(rid, "text")
        await client.send({"type": "cancel", "request_id": rid})
        summary = await client.turn(rid)
    assert summary.status == "cancelled"
    await asyncio.wait_for(fake_openai.client_disconnected.wait(), 2)


async def test_manual_session_check_passes_against_gpt(
    gpt_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(text_chunks=["Hi", " from", " GPT."])
    await run_manual_check(gpt_server, "gpt-4o-mini")


# -- a gateway (LiteLLM's proxy) in front of the models: both APIs, its own error wording ---------------

GATEWAY_KEY = "sk-gw-" + "g" * 40


@pytest.fixture
async def gateway_server(
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    tmp_path: Path,
    database_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[LiveServer]:
    """Parley with one gateway's two faces from the models file: ``gw`` (Chat Completions, base URL ending in
    /v1) and ``gw-claude`` (the Messages API, base URL the server root: the SDK adds /v1/messages)."""
    monkeypatch.setenv("GW_KEY", GATEWAY_KEY)
    models = tmp_path / "models.toml"
    models.write_text(
        f"""
[providers.gw]
kind = "openai"
base_url = "{fake_openai.base_url}"
key_env = "GW_KEY"
prefix = "gw/"

[providers.gw-claude]
kind = "anthropic"
base_url = "{fake_anthropic.base_url}"
key_env = "GW_KEY"
prefix = "gw-claude/"
"""
    )
    settings = make_settings(tmp_path, database_url, models_file=models, provider_retry_backoff_s=0.01)
    async with live_server(settings) as live:
        yield live


LITELLM_RATE_LIMIT = "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for gpt-4o"


async def test_gateway_rate_limit_in_the_stream_is_rate_limited(
    gateway_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    error = {"message": LITELLM_RATE_LIMIT, "type": "throttling_error", "param": None, "code": "429"}
    fake_openai.error_after(0, {"error": error})
    async with await gateway_server.client() as client:
        summary = await client.turn(await client.chat("Hi", model="gw/gpt-4o"))
    assert summary.error is not None
    assert (summary.error["stage"], summary.error["code"]) == ("provider", "rate_limited")
    assert (
        summary.error["content"] == f"The model provider 'gw' is rate limiting requests: {LITELLM_RATE_LIMIT}"
    )
    assert len(fake_openai.requests) == 3  # transient, and nothing was sent yet: retried
    assert fake_openai.requests[0]["model"] == "gpt-4o"
    rows = await gateway_server.store.session_messages(uuid.UUID(summary.session_id or ""))
    assert (rows[1].status, rows[1].error_code) == ("error", "rate_limited")


async def test_gateway_503_mid_stream_says_what_failed(
    gateway_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    said = "litellm.ServiceUnavailableError: the upstream deployment is not available"
    fake_openai.error_after(2, {"error": {"message": said, "type": None, "param": None, "code": "503"}})
    async with await gateway_server.client() as client:
        summary = await client.turn(await client.chat("Hi", model="gw/gpt-4o"))
    assert summary.error is not None
    assert (summary.error["stage"], summary.error["code"]) == ("provider", "provider_error")
    assert (
        summary.error["content"] == f"The model provider 'gw' is unavailable or overloaded (HTTP 503): {said}"
    )
    assert GATEWAY_KEY not in summary.error["content"]
    assert summary.text == "one two "
    assert len(fake_openai.requests) == 1  # text was sent: never retried
    rows = await gateway_server.store.session_messages(uuid.UUID(summary.session_id or ""))
    assert (rows[1].status, rows[1].content, rows[1].error_code) == ("error", "one two ", "provider_error")


async def test_gateway_anthropic_usage_comes_from_message_delta(
    gateway_server: LiveServer, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(text_chunks=["Hi", "!"], usage=(11, 205), late_input=True)
    async with await gateway_server.client() as client:
        summary = await client.turn(await client.chat("Hi", model="gw-claude/claude-sonnet-4"))
    assert (summary.status, summary.text) == ("completed", "Hi!")
    assert summary.usage == {"input_tokens": 11, "output_tokens": 205}
    assert fake_anthropic.requests[0]["model"] == "claude-sonnet-4"
    assert fake_anthropic.headers[0].get("x-api-key") == GATEWAY_KEY or (
        fake_anthropic.headers[0].get("authorization") == f"Bearer {GATEWAY_KEY}"
    )
    rows = await gateway_server.store.session_messages(uuid.UUID(summary.session_id or ""))
    assert rows[1].usage == {"input_tokens": 11, "output_tokens": 205}


# -- configuration over REST, and the guard against real providers -------------------------------------


async def test_models_endpoint_lists_what_is_configured(gpt_server: LiveServer) -> None:
    async with gpt_server.http() as http:
        body = (await http.get("/api/v1/models")).json()
    async with gpt_server.http(customer_id=None) as anonymous:
        assert (await anonymous.get("/api/v1/models")).status_code == 401
    rows = {row["provider"]: row for row in body["providers"]}
    assert rows["openai"]["configured"] is True
    assert rows["openai"]["served_by"] == "openai"
    assert rows["anthropic"]["configured"] is False
    assert rows["anthropic"]["key_env"] == "ANTHROPIC_API_KEY"
    assert rows["anthropic"]["served_by"] is None
    assert OPENAI_TEST_KEY not in str(body)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_tests_cannot_reach_a_real_provider(sdk: str) -> None:
    provider = build_provider(
        Endpoint(
            sdk, BUILTIN.providers[sdk], api_key="sk-real-looking", base_url=None
        )  # the vendor's own host
    )
    try:
        with pytest.raises(pytest.fail.Exception, match="tests talk only to local fake servers"):
            async for _ in provider.stream(ProviderRequest("gpt-4o-mini", [ChatMessage("user", "hi")])):
                pass
    finally:
        await provider.aclose()


async def test_an_unreachable_endpoint_is_named_to_the_client_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("LOCAL_KEY", "sk-local-" + "l" * 30)
    models = tmp_path / "models.toml"
    models.write_text(
        f'[providers.local]\nkind = "openai"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        'key_env = "LOCAL_KEY"\nprefix = "local/"\n'
    )
    settings = make_settings(tmp_path, models_file=models, provider_retry_backoff_s=0.01)
    caplog.set_level(logging.INFO)
    async with live_server(settings) as server, await server.client() as client:
        summary = await client.turn(await client.chat("Hi", model="local/llama"))
    assert summary.error is not None
    assert (summary.error["stage"], summary.error["code"]) == ("provider", "provider_error")
    assert f"'local' at 127.0.0.1:{port}: connection refused" in summary.error["content"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    named = [line for line in warnings if f"127.0.0.1:{port}" in line]
    assert len(named) == 1 and "local" in named[0] and "connection refused" in named[0], warnings
