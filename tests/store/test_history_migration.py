"""Migration 0002 over existing data, on SQLite and PostgreSQL: active leaves and the search index are
filled in for sessions stored before it, and it goes back down cleanly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection

from parley.store.db import alembic_config, create_engine
from parley.store.repository import Store
from parley.store.tables import UTCDateTime, utcnow
from tests.conftest import PG_ADMIN_DSN, _unavailable

SESSIONS = sa.table(
    "chat_sessions",
    sa.column("id", sa.Uuid),
    sa.column("customer_id", sa.String),
    sa.column("title", sa.String),
    sa.column("created_at", UTCDateTime),
    sa.column("updated_at", UTCDateTime),
)
MESSAGES = sa.table(
    "chat_messages",
    *(sa.column(name, sa.Uuid) for name in ("id", "session_id", "parent_id")),
    *(sa.column(name, sa.String) for name in ("customer_id", "role", "content", "status")),
    sa.column("created_at", UTCDateTime),
    sa.column("updated_at", UTCDateTime),
)


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no tables yet."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
        return
    name = f"parley_mig_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _unavailable(f"PostgreSQL at {PG_ADMIN_DSN}", exc)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def migrate_to(url: str, revision: str, down: bool = False) -> Callable[[Connection], None]:
    def run(connection: Connection) -> None:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)

    return run


async def test_0002_fills_in_old_sessions_and_goes_down(empty_url: str) -> None:
    engine = create_engine(empty_url)
    session_id, now = uuid.uuid4(), utcnow()
    ids = [uuid.uuid4() for _ in range(4)]
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate_to(empty_url, "0001"))
            row = {"customer_id": "c1", "created_at": now, "updated_at": now}
            await conn.execute(sa.insert(SESSIONS).values(id=session_id, title="Old", **row))
            for n, (message_id, content) in enumerate(
                zip(ids, ["quince jam", "ok", "more quince", ""], strict=True)
            ):
                at = now + timedelta(seconds=n)
                await conn.execute(
                    sa.insert(MESSAGES).values(
                        id=message_id,
                        session_id=session_id,
                        parent_id=ids[n - 1] if n else None,
                        customer_id="c1",
                        role="user" if n % 2 == 0 else "assistant",
                        content=content,
                        status="streaming" if n == 3 else "completed",
                        created_at=at,
                        updated_at=at,
                    )
                )
        async with engine.begin() as conn:
            await conn.run_sync(migrate_to(empty_url, "head"))

        store = Store(engine)
        view = await store.history.view("c1", session_id)
        assert [m.id for m in view.path] == ids and view.active_leaf_id == ids[-1]
        hits = await store.search.messages("c1", "quince", 10, 0)
        assert {h.message_id for h in hits} == {ids[0], ids[2]}
        assert await store.search.messages("c2", "quince", 10, 0) == []

        async with engine.begin() as conn:
            await conn.run_sync(migrate_to(empty_url, "0001", down=True))
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in sa.inspect(c).get_columns("chat_sessions")}
            )
            tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            count = await conn.scalar(sa.select(sa.func.count()).select_from(MESSAGES))
        assert "active_leaf_id" not in columns
        assert not {"chat_session_tags", "chat_messages_fts", "chat_messages_fts_keys"} & tables
        assert count == 4  # going down keeps the messages
    finally:
        await engine.dispose()
