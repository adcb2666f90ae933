"""The reload flow (docs/protocol.md section 5): a client that knows only its session reads the live partial
and its ``seq`` over REST, then resumes after that seq; the two together are exactly the answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from parley.store.tables import Message
from tests.conftest import LiveServer, live_server, make_settings
from tests.invariants import check_turn
from tests.resume_helpers import SLOW, TEXT, as_camel, drop, resumed, text_of, until_seq


@pytest.fixture
async def no_checkpoints(tmp_path: Path, database_url: str | None) -> AsyncIterator[LiveServer]:
    """Checkpoints far apart: the stored content stays empty while the answer streams, so what REST shows
    can only come from the running turn."""
    async with live_server(make_settings(tmp_path, database_url, checkpoint_interval_s=120)) as live:
        yield live


async def session(server: LiveServer, session_id: str, customer: str = "1") -> dict[str, Any]:
    async with server.http(customer) as http:
        response = await http.get(f"/api/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("dialect", ["camel", "snake"])
async def test_rest_partial_then_resume_is_the_whole_answer(no_checkpoints: LiveServer, dialect: str) -> None:
    server = no_checkpoints
    client = await server.client()
    rid = await client.chat("Count", options=SLOW)
    await until_seq(client, rid, 40)
    session_id = client.turns[rid][-1]["session_id"]
    await drop(client, "abort")  # the tab reloads: it knows its session, not the turn

    answer = (await session(server, session_id))["messages"][-1]
    assert answer["status"] == "streaming" and answer["request_id"] == rid
    seq, partial = answer["seq"], answer["content"]
    assert isinstance(seq, int) and seq >= 40 and partial  # live: no checkpoint was written yet
    async with await server.client(dialect=dialect) as reloaded:
        rest = as_camel(await resumed(reloaded, answer["request_id"], seq), dialect)
    assert rest[0]["seq"] == seq + 1
    assert partial + text_of(rest) == TEXT
    stored = (await session(server, session_id))["messages"][-1]
    assert stored["status"] == "completed" and stored["content"] == TEXT and stored["seq"] is None


async def test_the_partial_is_exactly_the_events_up_to_its_seq(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        rid = await client.chat("Count", options=SLOW)
        await until_seq(client, rid, 30)
        session_id = client.turns[rid][-1]["session_id"]
        answer = (await session(sqlite_server, session_id))["messages"][-1]
        events = await client.events(rid)
    upto = [e for e in events if e["seq"] <= answer["seq"]]
    assert answer["content"] == text_of(upto)
    question = (await session(sqlite_server, session_id))["messages"][0]
    assert question["role"] == "user" and question["seq"] is None


async def test_a_checkpoint_stores_its_seq_with_its_content(tmp_path: Path, database_url: str | None) -> None:
    """Also what is stored says exactly which events it holds (a partial from the database resumes too)."""
    settings = make_settings(tmp_path, database_url, checkpoint_interval_s=0.05)
    async with live_server(settings) as server, await server.client() as client:
        rid = await client.chat("Count", options={"text": TEXT, "chunks": 300, "delay_ms": 5})
        await until_seq(client, rid, 30)
        row = None
        async with asyncio.timeout(10):
            while row is None or not row.content:
                async with server.store.engine.connect() as conn:
                    found = await conn.execute(
                        select(Message.content, Message.stream_seq).where(
                            Message.request_id == rid, Message.role == "assistant"
                        )
                    )
                    row = found.one()
                await asyncio.sleep(0.02)  # polling the database: there is no event to wait on
        events = await client.events(rid)
    assert row.stream_seq is not None
    assert row.content == text_of([e for e in events if e["seq"] <= row.stream_seq])


async def test_a_tool_turn_shows_its_steps_so_far(sqlite_server: LiveServer) -> None:
    script = {
        "tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}],
        "tool_text": "Let me work it out. ",
        "text": TEXT,
        "chunks": 300,
        "delay_ms": 3,
    }
    async with await sqlite_server.client() as client:
        rid = await client.chat("Sum", options=script, tools=["calculator"])
        await client.wait_for(rid, "toolResult")
        await until_seq(client, rid, client.turns[rid][-1]["seq"] + 20)
        session_id = client.turns[rid][-1]["session_id"]
        answer = (await session(sqlite_server, session_id))["messages"][-1]
        done = check_turn(await client.events(rid))
    assert answer["status"] == "streaming"
    (step,) = answer["tool_steps"]
    assert step["calls"][0]["name"] == "calculator" and step["results"][0]["output"] == "42"
    upto = [e for e in done.events if e["seq"] <= answer["seq"]]
    assert answer["content"] == text_of(upto) and answer["content"].startswith("Let me work it out. ")


async def test_another_customer_sees_no_partial(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        rid = await client.chat("Mine", options=SLOW)
        await client.wait_for(rid, "text")
        session_id = client.turns[rid][-1]["session_id"]
        async with sqlite_server.http(f"other-{uuid.uuid4().hex}") as http:
            assert (await http.get(f"/api/v1/sessions/{session_id}")).status_code == 404
        await client.events(rid)
