"""Migration 0003 on SQLite and PostgreSQL: answers get a ``tool_steps`` column (old rows: null), and it
goes back down without losing messages."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from parley.store.db import create_engine
from parley.store.repository import Store
from parley.store.tables import utcnow
from tests.store.test_history_migration import MESSAGES, SESSIONS, empty_url, migrate_to

__all__ = ["empty_url"]  # the fixture, shared with the 0002 test

STEPS = [
    {
        "text": "",
        "calls": [{"id": "c1", "name": "calculator", "input": {"expression": "1+1"}}],
        "results": [{"call_id": "c1", "output": "2", "is_error": False}],
    }
]


async def test_0003_adds_tool_steps_and_goes_down(empty_url: str) -> None:
    engine = create_engine(empty_url)
    session_id, old = uuid.uuid4(), uuid.uuid4()
    now = utcnow()
    row = {"session_id": session_id, "customer_id": "c1", "status": "completed", "created_at": now}
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate_to(empty_url, "0002"))
            await conn.execute(
                sa.insert(SESSIONS).values(
                    id=session_id, customer_id="c1", title="t", created_at=now, updated_at=now
                )
            )
            await conn.execute(
                sa.insert(MESSAGES).values(id=old, role="user", content="before", updated_at=now, **row)
            )
        async with engine.begin() as conn:
            await conn.run_sync(migrate_to(empty_url, "head"))

        store = Store(engine)
        try:
            record = await store.start_turn(
                customer_id="c1",
                session_id=session_id,
                prompt="again",
                model="demo",
                provider="demo",
                request_id="r",
            )
            await store.checkpoint(record.ai_message_id, "", None, 3, STEPS)
            await store.finish_turn(
                session_id=session_id,
                ai_message_id=record.ai_message_id,
                content="It is 2.",
                reasoning=None,
                status="completed",
                usage=None,
                error_code=None,
                tool_steps=STEPS,
            )
            view = await store.history.view("c1", session_id)
            assert [m.tool_steps for m in view.path] == [None, None, STEPS]
            later = await store.start_turn(
                customer_id="c1",
                session_id=session_id,
                prompt="more",
                model="demo",
                provider="demo",
                request_id="r2",
            )
            assert [(m.role, m.tool_steps) for m in later.history] == [
                ("user", None),
                ("user", None),
                ("assistant", STEPS),
            ]
        finally:
            await store.close()

        async with engine.begin() as conn:
            await conn.run_sync(migrate_to(empty_url, "0002", down=True))
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in sa.inspect(c).get_columns("chat_messages")}
            )
            count = await conn.scalar(sa.select(sa.func.count()).select_from(MESSAGES))
        assert "tool_steps" not in columns
        assert count == 5  # going down keeps the messages
    finally:
        await engine.dispose()
