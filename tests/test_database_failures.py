"""PROTOCOL section 3 on the database-error path: the bracket holds, nothing claims to be saved."""

from __future__ import annotations

import json

from sqlalchemy import text

from tests.conftest import LiveServer


async def test_question_not_stored_is_a_database_error(sqlite_server: LiveServer) -> None:
    async with sqlite_server.store.engine.begin() as conn:
        await conn.execute(text("DROP TABLE chat_messages"))
    async with await sqlite_server.client() as client:
        summary = await client.turn(await client.chat("will not be stored"))
        assert summary.status == "error"
        assert summary.error is not None
        assert (summary.error["stage"], summary.error["code"]) == ("database", "database_error")
        assert "dbOperationExecuted" not in summary.kinds
        for word in ("SELECT", "INSERT", "sqlite", "Traceback"):
            assert word not in summary.error["content"]
        await client.send({"type": "ping"})
        assert (await client.next_other())["type"] == "pong"


async def test_answer_not_stored_is_a_database_error_without_db_event(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        rid = await client.chat("stream then fail to save", options={"chunks": 20, "delay_ms": 20})
        await client.wait_for(rid, "text")
        async with sqlite_server.store.engine.begin() as conn:
            await conn.execute(text("DROP TABLE chat_messages"))
        summary = await client.turn(rid)
    assert summary.status == "error"
    assert summary.error is not None
    assert summary.error["stage"] == "database"
    assert summary.kinds[-2:] == ["error", "fullProcessComplete"]
    assert "dbOperationExecuted" not in summary.kinds
    assert summary.text  # what streamed before the failure was sent
    assert all(json.dumps(e).count("Traceback") == 0 for e in summary.events)
