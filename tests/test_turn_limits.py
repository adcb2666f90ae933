"""Parked turns (issue 12 item 6): a disconnect detaches a turn, so what one customer may keep running is
bounded: ``PARLEY_MAX_TURNS_PER_CUSTOMER`` turns running or waiting at once over all its connections, each
for at most ``PARLEY_MAX_TURN_S``, and the demo model streams any number of chunks in constant memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley.providers.base import ChatMessage, ProviderRequest, TextDelta
from parley.providers.demo import DemoProvider
from tests.conftest import LiveServer, live_server, make_settings
from tests.invariants import check_turn
from tests.resume_helpers import TEXT, drop, resumed, stored_answer
from tests.wsclient import ChatClient

LONG = {"text": TEXT, "chunks": 300, "delay_ms": 20}  # six seconds: still running while the test looks


@pytest.fixture
async def capped(tmp_path: Path) -> AsyncIterator[LiveServer]:
    # The tests leave turns running; the server's stop need not give them the default 5 s to finish.
    settings = make_settings(tmp_path, max_turns_per_customer=3, shutdown_grace_s=0.5)
    async with live_server(settings) as live:
        yield live


@pytest.fixture
async def short_turns(tmp_path: Path, database_url: str | None) -> AsyncIterator[LiveServer]:
    """SQLite and PostgreSQL, with turns stopped after a second."""
    async with live_server(make_settings(tmp_path, database_url, max_turn_s=1.0)) as live:
        yield live


async def streaming(client: ChatClient) -> str:
    rid = await client.chat("Go on", options=LONG)
    await client.wait_for(rid, "text")
    return rid


async def refused(client: ChatClient) -> str:
    """A turn beyond the cap: the whole bracket of a refusal, nothing stored."""
    rid = await client.chat("One more", options=LONG)
    turn = check_turn(await client.events(rid))
    assert turn.kinds == ["working", "error", "fullProcessComplete"]
    assert turn.status == "error"
    error = turn.error
    assert error is not None
    assert (error["stage"], error["code"]) == ("limits", "too_many_requests")
    assert "at most 3" in error["content"]
    return rid


async def test_a_customer_may_keep_only_so_many_turns_over_all_connections(capped: LiveServer) -> None:
    first, second = await capped.client(), await capped.client()
    one = await streaming(first)
    await first.chat("Queued behind it", options=LONG)  # waiting counts too
    await streaming(second)
    await refused(second)
    async with await capped.client(2) as other:  # the cap is per customer
        await streaming(other)
    await drop(first, "abort")  # a disconnect detaches: its two turns still count
    async with await capped.client() as third:
        await refused(third)
        async with capped.http() as http:
            assert (await http.post(f"/api/v1/turns/{one}/cancel")).status_code == 202
        # once the cancelled turn has ended (its answer stored), the one queued behind it runs: room for one
        assert check_turn(await resumed(third, one, -1)).status == "cancelled"
        rid = await third.chat("Now there is room", options={"text": "short", "chunks": 2})
        assert check_turn(await third.events(rid)).status == "completed"
    await second.close()


async def test_the_count_comes_back_as_turns_end(capped: LiveServer) -> None:
    async with await capped.client() as client:
        for _ in range(8):  # many more than the cap, one after another: never more than one at once
            rid = await client.chat("Quick", options={"text": "short answer", "chunks": 3})
            assert check_turn(await client.events(rid)).status == "completed"
    assert capped.runtime.streams.running("1") == 0


async def test_a_turn_past_the_longest_duration_is_stopped_and_stored_cancelled(
    short_turns: LiveServer,
) -> None:
    async with await short_turns.client() as client:
        rid = await client.chat("Go on", options=LONG)
        turn = check_turn(await client.events(rid))
    assert turn.kinds[-3:] == ["cancelled", "dbOperationExecuted", "fullProcessComplete"]
    assert turn.status == "cancelled"
    assert turn.only("cancelled")["code"] == "turn_too_long"
    assert turn.text and TEXT.startswith(turn.text) and turn.text != TEXT
    assert turn.session_id is not None
    stored = await stored_answer(short_turns, "1", turn.session_id)
    assert (stored["status"], stored["error_code"]) == ("cancelled", "turn_too_long")
    assert stored["content"] == turn.text


async def test_a_detached_turn_is_stopped_at_the_longest_duration_too(short_turns: LiveServer) -> None:
    owner = await short_turns.client()
    rid = await streaming(owner)
    await drop(owner, "close")
    async with await short_turns.client() as again:
        turn = check_turn(await resumed(again, rid, -1))
    assert turn.status == "cancelled"
    assert turn.only("cancelled")["code"] == "turn_too_long"


async def test_a_cancel_by_the_client_has_no_code(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        rid = await streaming(client)
        await client.send({"type": "cancel", "request_id": rid})
        turn = check_turn(await client.events(rid))
    assert "code" not in turn.only("cancelled")
    assert turn.session_id is not None
    assert (await stored_answer(sqlite_server, "1", turn.session_id))["error_code"] is None


async def test_the_demo_model_streams_a_million_chunks_in_constant_memory() -> None:
    request = ProviderRequest(
        "demo", [ChatMessage("user", "hi")], options={"text": "ab", "chunks": 1_000_000}
    )
    tracemalloc.start()
    try:
        deltas = 0
        async for event in DemoProvider().stream(request):
            deltas += isinstance(event, TextDelta)
            if deltas == 200_000:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert deltas == 200_000
    assert peak < 256 * 1024, f"peak {peak:,} bytes"
