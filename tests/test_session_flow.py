"""The first user's defining test: two messages on one connection land in the same session."""

from __future__ import annotations

import uuid

from tests.conftest import LiveServer
from tests.wsclient import chat_frame


async def test_two_messages_share_one_session(server: LiveServer) -> None:
    async with await server.client() as client:
        assert client.ready["type"] == "websocketReady"
        assert client.ready["content"] == "Backend ready"
        assert client.ready["connection_id"]

        first = await client.turn(await client.chat("First message", model="demo"))
        assert first.status == "completed"
        assert first.session_id is not None
        second = await client.turn(await client.chat("Second message", session_id=first.session_id))
        assert second.status == "completed"
        assert second.session_id == first.session_id

    rows = await server.store.session_messages(uuid.UUID(first.session_id))
    assert [(m.role, m.status) for m in rows] == [
        ("user", "completed"),
        ("assistant", "completed"),
        ("user", "completed"),
        ("assistant", "completed"),
    ]
    assert [str(m.id) for m in rows] == [
        first.user_message_id,
        first.ai_message_id,
        second.user_message_id,
        second.ai_message_id,
    ]
    assert rows[0].content == "First message"
    assert rows[1].content == first.text
    assert rows[3].content == second.text
    assert rows[3].parent_id == rows[2].id and rows[2].parent_id == rows[1].id

    async with server.http() as http:
        response = await http.get(f"/api/v1/sessions/{first.session_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == first.session_id
    assert [m["id"] for m in body["messages"]] == [str(m.id) for m in rows]
    assert body["messages"][1]["content"] == first.text
    for message in body["messages"]:
        assert {"id", "role", "content", "reasoning", "status", "model", "usage", "created_at"} <= set(
            message
        )


async def test_second_turn_sees_the_stored_history(server: LiveServer) -> None:
    async with await server.client() as client:
        first = await client.turn(await client.chat("Remember the word parsnip"))
        second = await client.turn(await client.chat("What was the word?", session_id=first.session_id or ""))
    # The demo model reports the context size it was given as input tokens: history makes it grow.
    assert first.usage is not None and second.usage is not None
    assert second.usage["input_tokens"] > first.usage["input_tokens"] + 4


async def test_chat_history_migrates_into_a_new_session_only(server: LiveServer) -> None:
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Earlier question"},
        {"role": "assistant", "content": [{"type": "text", "text": "Earlier answer"}]},
    ]
    async with await server.client() as client:
        frame = chat_frame("Now this", request_id="migrate-1")
        frame["user_input"]["chat_history"] = history
        await client.send(frame)
        first = await client.turn("migrate-1")
        again = chat_frame("And this", session_id=first.session_id or "", request_id="migrate-2")
        again["user_input"]["chat_history"] = [{"role": "user", "content": "ignored for an existing session"}]
        await client.send(again)
        await client.turn("migrate-2")
    rows = await server.store.session_messages(uuid.UUID(first.session_id or ""))
    assert [(m.role, m.content) for m in rows[:3]] == [
        ("user", "Earlier question"),
        ("assistant", "Earlier answer"),
        ("user", "Now this"),
    ]
    assert [m.role for m in rows[3:]] == ["assistant", "user", "assistant"]
    assert "ignored for an existing session" not in [m.content for m in rows]
    assert str(rows[2].id) == first.user_message_id
