"""``parley chat`` as a person and a script use it: the real command against a real server, asked once with
``-m``, driven through a pseudo-terminal (Ctrl-C mid-answer keeps the partial), across a dropped connection,
and its refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from parley.auth import mint_token
from tests.chat_helpers import Proxy, Terminal, chat_env, free_port, one_line, piped_chat, run_chat
from tests.conftest import LiveServer, live_server, make_settings

# A deterministic answer whose every delta says where it belongs: a missing or doubled piece shows.
TEXT = "".join(f"{n:04d} " for n in range(300))


def slow(delay_ms: int, chunks: int = 300) -> list[str]:
    return ["-o", "text", TEXT[: chunks * 5], "-o", "chunks", str(chunks), "-o", "delay_ms", str(delay_ms)]


async def session(http: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    response = await http.get(f"/api/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def only_session_id(http: httpx.AsyncClient) -> str:
    items = (await http.get("/api/v1/sessions")).json()["items"]
    assert len(items) == 1, items
    return str(items[0]["id"])


async def ended(http: httpx.AsyncClient) -> None:
    """Wait until the only session's last answer is no longer streaming (nothing to await but REST)."""
    session_id = await only_session_id(http)
    for _ in range(200):
        if (await session(http, session_id))["messages"][-1]["status"] != "streaming":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the answer is still streaming after 10 s")


def http_for(server: LiveServer, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


async def test_ask_once_with_the_dev_token_then_continue_the_session(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, jwt_secret=None, dev=True)  # the dev secret in the data directory
    async with live_server(settings) as server:
        token = mint_token(settings.ensure_dev_secret(), "1", 600)  # the customer `parley chat` defaults to
        env, url = chat_env(tmp_path), ["--url", server.ws_url]
        code, out, err = await run_chat(env, tmp_path, "-m", "First question", *url)
        assert (code, err) == (0, ""), err
        async with http_for(server, token) as http:
            session_id = await only_session_id(http)
            code, second, err = await run_chat(
                env, tmp_path, "--message", "Second", "--session", session_id, *url
            )
            assert (code, err) == (0, ""), err
            messages = (await session(http, session_id))["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages[::2]] == ["First question", "Second"]
    assert [m["status"] for m in messages[1::2]] == ["completed", "completed"]
    assert [out, second] == [m["content"] + "\n" for m in messages[1::2]], (
        "stdout is the answer, nothing else"
    )


async def test_ctrl_c_mid_answer_keeps_the_partial_then_ctrl_c_at_the_prompt_quits(
    sqlite_server: LiveServer, tmp_path: Path
) -> None:
    args = ["--url", sqlite_server.ws_url, "--token", sqlite_server.token(), *slow(20)]
    term = Terminal(chat_env(tmp_path), tmp_path, *args)
    try:
        await term.expect(b"> ")
        term.type(b"Count slowly\n")
        start = await term.expect(b"Count slowly\r\n")
        await term.expect(b"0005 ", start)  # the answer is streaming
        term.type(b"\x03")
        end = await term.expect(b"[cancelled", start)
        prompt = await term.expect(b"> ", end)
        shown = term.text(start, end - len(b"[cancelled")).removesuffix("\x1b[2m").rstrip("\n")
        assert "session " in term.text(end, prompt)
        term.type(b"\x03")  # at the prompt: quit
        assert await term.wait() == 130
    finally:
        term.close()
    async with sqlite_server.http() as http:
        session_id = await only_session_id(http)
        answer = (await session(http, session_id))["messages"][-1]
    assert answer["status"] == "cancelled"
    assert answer["content"] == shown, "the partial stored is exactly what the terminal showed"
    assert TEXT.startswith(shown) and 0 < len(shown) < len(TEXT)


async def test_a_dropped_connection_is_resumed_with_nothing_missing_or_twice(
    sqlite_server: LiveServer, tmp_path: Path
) -> None:
    async with Proxy(sqlite_server.port) as proxy:
        args = ["-m", "Count", "--url", proxy.ws_url, "--token", sqlite_server.token(), *slow(5, 200)]
        async with piped_chat(chat_env(tmp_path), tmp_path, *args) as chat:
            await chat.read_until(b"0020 ")
            proxy.cut()
            code, out, err = await chat.finish()
        assert proxy.connections == 2, "it reconnected once"
    assert code == 0, err
    assert "reconnecting" in err
    async with sqlite_server.http() as http:
        answer = (await session(http, await only_session_id(http)))["messages"][-1]
    assert answer["status"] == "completed"
    assert out == answer["content"] + "\n" == TEXT[:1000] + "\n"


async def test_an_answer_that_ended_while_disconnected_is_read_from_rest(tmp_path: Path) -> None:
    async with (
        live_server(make_settings(tmp_path, resume_ttl_s=0.1)) as server,
        Proxy(server.port) as proxy,
        server.http() as http,
    ):
        args = ["-m", "Count", "--url", proxy.ws_url, "--token", server.token(), *slow(5, 100)]
        async with piped_chat(chat_env(tmp_path), tmp_path, *args) as chat:
            await chat.read_until(b"0010 ")
            proxy.refusing = True
            proxy.cut()
            await ended(http)  # the turn goes on detached to its end; then its events are forgotten
            streams = server.runtime.streams
            later = streams.clock() + 1  # the server's clock, moved past PARLEY_RESUME_TTL_S
            streams.clock = lambda: later
            proxy.refusing = False
            code, out, err = await chat.finish(timeout=20)
    assert code == 0, err
    assert "cannot resume this turn (stream_expired): reading the answer from the REST API" in err
    assert out == TEXT[:500] + "\n"


async def test_a_refused_token_and_a_failed_answer_are_one_line_and_exit_1(
    sqlite_server: LiveServer, tmp_path: Path
) -> None:
    env, url = chat_env(tmp_path), ["--url", sqlite_server.ws_url]
    code, out, err = await run_chat(env, tmp_path, "-m", "Hi", *url, "--token", "not-a-token")
    assert (code, out) == (1, "")
    assert "401" in one_line(err)
    token = ["--token", sqlite_server.token()]
    code, out, err = await run_chat(env, tmp_path, "-m", "Hi", *url, *token, "-o", "fail_after", "3")
    assert code == 1 and out.strip(), "the partial answer is printed"
    assert "provider_error" in one_line(err)


async def test_no_token_and_no_dev_secret_is_refused_with_exit_2(tmp_path: Path) -> None:
    code, out, err = await run_chat(chat_env(tmp_path / "empty"), tmp_path, "-m", "Hi")
    assert (code, out) == (2, "")
    assert "--token" in one_line(err) and "PARLEY_DATA_DIR" in err
    assert not (tmp_path / "empty").exists(), "no secret is invented"


async def test_an_unreachable_server_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/chat/ws"
    code, out, err = await run_chat(chat_env(tmp_path), tmp_path, "-m", "Hi", "--url", url, "--token", "t")
    assert (code, out) == (1, "")
    assert url in one_line(err) and "refused" in err


async def test_reasoning_and_tool_steps_are_shown_apart_from_the_answer_and_exit_quits(
    sqlite_server: LiveServer, tmp_path: Path
) -> None:
    calls = '[{"name": "calculator", "arguments": {"expression": "6*7"}}]'
    args = ["--url", sqlite_server.ws_url, "--token", sqlite_server.token(), "--tool", "calculator"]
    term = Terminal(chat_env(tmp_path), tmp_path, *args, "-o", "tool_calls", calls, "-o", "reasoning", "Hmm")
    try:
        await term.expect(b"> ")
        term.type(b"What is 6*7?\n")
        start = await term.expect(b"What is 6*7?\r\n")
        end = await term.expect(b"> ", await term.expect(b"[session ", start))
        term.type(b"/exit\n")
        assert await term.wait() == 0
    finally:
        term.close()
    lines = term.text(start, end).splitlines()
    assert lines[:3] == ["Hmm", '[tool calculator {"expression": "6*7"}]', "[result 42]"]
    assert lines[3:5] == ["Hmm", "Tool results: calculator: 42"], "the answer on a line of its own"
    assert lines[5].startswith("[session ")
