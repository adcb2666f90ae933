"""The text policy end to end (parley/text.py): NUL and lone surrogates from a model become U+FFFD on the
wire and in the store, in text and reasoning; from a client they are refused with ``invalid_request``
naming the field, and nothing is stored."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from sqlalchemy import func, select

from parley.store.tables import Message
from tests.conftest import LiveServer
from tests.invariants import Frame, check_turn
from tests.resume_helpers import nothing_else, stored_answer
from tests.wsclient import ChatClient

R = "\ufffd"


async def message_count(server: LiveServer, customer: str = "1") -> int:
    """The customer's stored messages (the PostgreSQL database is shared by the tests of a run)."""
    async with server.store.engine.connect() as conn:
        count = select(func.count()).select_from(Message).where(Message.customer_id == customer)
        return int(await conn.scalar(count) or 0)


async def test_a_models_nul_and_lone_surrogates_arrive_and_are_stored_replaced(server: LiveServer) -> None:
    # The demo model's ``escapes`` turns these \\uXXXX into the code points themselves: a lone high and
    # low surrogate, a NUL, and a real (paired) emoji that must pass untouched.
    options = {
        "text": "a\\ud800b \\u0000c \\udfff d \U0001f600 e",
        "reasoning": "think \\ud83d and \\u0000 then",
        "escapes": True,
        "chunks": 6,
    }
    async with await server.client() as client:
        turn = check_turn(await client.events(await client.chat("Break it", options=options)))
    expected = f"a{R}b {R}c {R} d \U0001f600 e"
    assert turn.status == "completed" and turn.text == expected
    reasoning = "".join(e["content"] for e in turn.events if e["type"] == "reasoning")
    assert reasoning == f"think {R} and {R} then"
    assert turn.session_id is not None
    stored = await stored_answer(server, "1", turn.session_id)
    assert stored["content"] == expected and stored["reasoning"] == reasoning
    assert stored["status"] == "completed"


async def test_a_surrogate_in_a_failing_models_partial_is_stored_too(server: LiveServer) -> None:
    options = {"text": "x\\udc00 y z w", "escapes": True, "chunks": 4, "fail_after": 2}
    async with await server.client() as client:
        turn = check_turn(await client.events(await client.chat("Fail", options=options)))
    assert turn.status == "error" and turn.error is not None and turn.error["stage"] == "provider"
    assert turn.session_id is not None
    stored = await stored_answer(server, "1", turn.session_id)
    assert stored["content"] == turn.text and R in turn.text


async def raw_turn(client: ChatClient, raw: str) -> list[Frame]:
    """Send a frame as raw text (JSON escapes the client library would never write); its one turn."""
    await client.ws.send(raw)
    async with asyncio.timeout(10):
        while not (client.turns and all(client.finished(rid) for rid in client.turns)):
            await client.pump()
    (events,) = client.turns.values()
    return events


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"request_id":"p1","user_input":{"prompt":"bad \\ud800 text"}}', "user_input.prompt"),
        (
            '{"request_id":"p2","user_input":{"prompt":[{"type":"text","text":"ok"},'
            '{"type":"text","text":"\\udfff"}]}}',
            "user_input.prompt[1].text",
        ),
        (
            '{"request_id":"p3","user_input":{"prompt":"hi","chat_history":'
            '[{"role":"user","content":"x\\ud801"}]}}',
            "user_input.chat_history[0].content",
        ),
        (
            '{"request_id":"p4","user_input":{"prompt":"hi"},"user_settings":{"text":{"system_prompt":'
            '"\\ud800"}}}',
            "user_settings.text.system_prompt",
        ),
        ('{"request_id":"p5","user_input":{"prompt":"hi","\\ud800":1}}', "a key in user_input"),
    ],
)
async def test_a_clients_lone_surrogate_is_refused_naming_the_field(
    sqlite_server: LiveServer, raw: str, field: str
) -> None:
    async with await sqlite_server.client() as client:
        turn = check_turn(await raw_turn(client, raw))
        await nothing_else(client)
    assert turn.kinds == ["working", "error", "fullProcessComplete"]
    assert turn.error is not None and turn.error["code"] == "invalid_request"
    assert field in turn.error["content"]
    assert await message_count(sqlite_server) == 0


async def test_a_clients_nul_in_stored_text_is_refused(server: LiveServer) -> None:
    customer = f"nul-{uuid.uuid4().hex}"
    async with await server.client(customer) as client:
        turn = check_turn(await client.events(await client.chat("nul \x00 here")))
    assert turn.error is not None and turn.error["code"] == "invalid_request"
    assert "user_input.prompt" in turn.error["content"] and "NUL" in turn.error["content"]
    assert await message_count(server, customer) == 0


@pytest.mark.parametrize(
    "request_id",
    ["line\nbreak", "nul\u0000", "x" * 256, "tab\there", "del\u007f"],
)
async def test_an_unusable_request_id_is_refused_and_the_turn_carries_a_server_made_one(
    server: LiveServer, request_id: str
) -> None:
    """On PostgreSQL such an id used to reach the store and fail there (``database_error``)."""
    async with await server.client() as client:
        await client.chat("Hello", request_id=request_id)
        async with asyncio.timeout(10):
            while not (client.turns and all(client.finished(rid) for rid in client.turns)):
                await client.pump()
    ((rid, events),) = client.turns.items()
    turn = check_turn(events)
    assert re.fullmatch("[0-9a-f]{32}", rid)
    assert turn.error is not None and turn.error["code"] == "invalid_request"
    assert "request_id" in turn.error["content"]


async def test_a_surrogate_request_id_is_refused_too(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        events = await raw_turn(client, '{"request_id":"r\\ud800","user_input":{"prompt":"hi"}}')
    turn = check_turn(events)
    assert re.fullmatch("[0-9a-f]{32}", turn.request_id)
    assert turn.error is not None and "request_id" in turn.error["content"]


@pytest.mark.parametrize("kind", ["cancel", "resume"])
async def test_a_control_frame_with_a_lone_surrogate_is_invalid_request(
    sqlite_server: LiveServer, kind: str
) -> None:
    async with await sqlite_server.client() as client:
        await client.ws.send(f'{{"type":"{kind}","request_id":"r\\udc00","after_seq":1}}')
        error = await client.next_other()
        await nothing_else(client)
    assert error["type"] == "error" and error["code"] == "invalid_request"
    assert "request_id" in error["content"] and "request_id" not in error
