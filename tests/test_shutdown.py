"""SIGTERM to ``parley serve``: running turns get a grace period, new requests are refused, then exit."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.test_cli import ServeProcess, cli_env, parley_serve
from tests.wsclient import ChatClient

EXIT_TIMEOUT_S = 20.0


def answer_rows(database: Path, request_id: str) -> list[tuple[str, str, str]]:
    """(role, status, content) of a turn's messages, read with sqlite3 after the server has exited."""
    with closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT role, status, content FROM chat_messages WHERE request_id = ? ORDER BY created_at",
            (request_id,),
        ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


async def close_code(client: ChatClient, timeout: float = EXIT_TIMEOUT_S) -> int | None:
    """Read until the server closes the socket; the close code it sent (None: no close frame)."""

    async def read_until_closed() -> None:
        while True:
            await client.pump(timeout)

    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(read_until_closed(), timeout)
    return info.value.rcvd.code if info.value.rcvd is not None else None


async def assert_no_new_connections(server: ServeProcess, token: str) -> None:
    """A draining server takes no new connections: refused at TCP level, or 503 before the upgrade."""
    status: int | None = None
    try:
        async with connect(f"{server.ws_url}?token={token}", open_timeout=5):
            pytest.fail("a new connection was accepted during shutdown")
    except InvalidStatus as exc:
        status = exc.response.status_code
    except OSError:
        return
    assert status == 503


def dev_env(data_dir: Path, grace_s: float) -> dict[str, str]:
    return cli_env(data_dir, PARLEY_SHUTDOWN_GRACE_S=str(grace_s))


async def test_sigterm_lets_a_running_turn_finish_and_refuses_new_requests(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with parley_serve(tmp_path, dev_env(data_dir, 5), "--dev") as server:
        token = server.dev_token()
        async with await ChatClient.open(server.ws_url, token) as client:
            running = await client.chat("Finish me", options={"chunks": 30, "delay_ms": 50})
            await client.wait_for(running, "text")
            server.signal(signal.SIGTERM)
            late = await client.chat("Too late")

            refused = await client.turn(late)
            assert refused.status == "error" and refused.error is not None
            assert (refused.error["stage"], refused.error["code"]) == ("internal", "server_shutting_down")
            assert refused.kinds == ["working", "error", "fullProcessComplete"]
            await assert_no_new_connections(server, token)

            finished = await client.turn(running, timeout=EXIT_TIMEOUT_S)
            assert finished.status == "completed"
            assert len([k for k in finished.kinds if k == "text"]) == 30
            assert await close_code(client) == 1012  # docs/protocol.md: "closes connections with code 1012"
        await server.wait_exit(EXIT_TIMEOUT_S)

    rows = answer_rows(data_dir / "parley.db", running)
    assert rows == [("user", "completed", "Finish me"), ("assistant", "completed", finished.text)]
    assert answer_rows(data_dir / "parley.db", late) == [], "a refused request stores nothing"


async def test_sigterm_after_the_grace_period_cancels_and_keeps_the_partial_answer(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with parley_serve(tmp_path, dev_env(data_dir, 0.5), "--dev") as server:
        async with await ChatClient.open(server.ws_url, server.dev_token()) as client:
            long = await client.chat("Never finishes", options={"chunks": 500, "delay_ms": 20})
            await client.wait_for(long, "text")
            server.signal(signal.SIGTERM)

            turn = await client.turn(long, timeout=EXIT_TIMEOUT_S)
            assert turn.status == "cancelled"
            assert turn.kinds[-3:] == ["cancelled", "dbOperationExecuted", "fullProcessComplete"]
            assert 0 < len([k for k in turn.kinds if k == "text"]) < 500
            assert await close_code(client) == 1012
        await server.wait_exit(EXIT_TIMEOUT_S)

    rows = answer_rows(data_dir / "parley.db", long)
    assert rows == [("user", "completed", "Never finishes"), ("assistant", "cancelled", turn.text)]
    assert turn.text, "some text was streamed before the cancel"


async def test_sigterm_with_queued_requests_refuses_them(tmp_path: Path) -> None:
    """Requests already waiting behind the running turn are refused too, each with its own bracket."""
    data_dir = tmp_path / "data"
    async with parley_serve(tmp_path, dev_env(data_dir, 5), "--dev") as server:
        async with await ChatClient.open(server.ws_url, server.dev_token()) as client:
            running = await client.chat("Running", options={"chunks": 20, "delay_ms": 50})
            queued = [await client.chat(f"Queued {i}") for i in range(3)]
            await client.wait_for(running, "text")
            server.signal(signal.SIGTERM)
            assert (await client.turn(running, timeout=EXIT_TIMEOUT_S)).status == "completed"
            for rid in queued:
                refused = await client.turn(rid)
                assert refused.error is not None and refused.error["code"] == "server_shutting_down"
        await server.wait_exit(EXIT_TIMEOUT_S)
    for rid in queued:
        assert answer_rows(data_dir / "parley.db", rid) == []


async def test_sigterm_with_idle_connection_exits_promptly(tmp_path: Path) -> None:
    async with parley_serve(tmp_path, dev_env(tmp_path / "data", 30), "--dev") as server:
        async with await ChatClient.open(server.ws_url, server.dev_token()) as client:
            server.signal(signal.SIGTERM)
            # Nothing runs, so the 30 s grace period is not waited out.
            assert await close_code(client, timeout=5) == 1012
        await server.wait_exit(timeout=5)


async def test_sigterm_exit_status_is_zero(tmp_path: Path) -> None:
    """A graceful shutdown is a success: `parley serve` should exit 0 (cli.main returns 0)."""
    async with parley_serve(tmp_path, dev_env(tmp_path / "data", 5), "--dev") as server:
        server.signal(signal.SIGTERM)
        code = await server.wait_exit(EXIT_TIMEOUT_S)
    assert code == 0, f"exit status {code} (negative: killed by signal {-code})"
