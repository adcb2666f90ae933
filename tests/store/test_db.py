"""The engine: SQLite runs in WAL mode with a busy timeout and foreign keys; migrations go both ways."""

from __future__ import annotations

import traceback
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import SQLAlchemyError

from parley.store import db
from parley.store.db import alembic_config, create_engine, migrate


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db' / 'p.db'}")  # the folder is created
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 5000
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_migrations_upgrade_twice_and_downgrade(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    engine = create_engine(url)
    try:
        await migrate(engine)
        await migrate(engine)  # idempotent
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"chat_sessions", "chat_messages", "alembic_version"} <= tables

        def downgrade(connection: object) -> None:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.downgrade(config, "base")

        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert "chat_messages" not in tables
    finally:
        await engine.dispose()


async def test_postgres_connection_killed_while_idle_is_replaced(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping on a busy pool, but a connection that sat idle is checked, and a dead one replaced."""
    monkeypatch.setattr(db, "IDLE_PING_AFTER_S", 0.0)
    engine = create_engine(postgres_url)
    pid_sql = text("SELECT pg_backend_pid()")
    try:
        async with engine.connect() as one, engine.connect() as two:  # two pooled connections
            pids = {(await one.execute(pid_sql)).scalar(), (await two.execute(pid_sql)).scalar()}
        admin = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
        try:
            for pid in pids:
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        async with engine.connect() as conn:
            assert (await conn.execute(pid_sql)).scalar() not in pids
    finally:
        await engine.dispose()


async def test_a_failed_write_never_shows_its_parameters(store_url: str) -> None:
    """SQLAlchemy puts a statement's parameters in str(error), and so in every logged traceback: there they
    would be the users' questions and the answers. The engines hide them."""
    engine = create_engine(store_url)
    answer = "the answer text a user must never find in a log"
    try:
        await migrate(engine)
        with pytest.raises(SQLAlchemyError) as failure:
            async with engine.begin() as conn:
                await conn.execute(
                    text("INSERT INTO chat_messages (id, content) VALUES (:id, :content)"),
                    {"id": "not-a-uuid", "content": answer},
                )
    finally:
        await engine.dispose()
    shown = "".join(traceback.format_exception(failure.value))
    assert "INSERT INTO chat_messages" in shown  # the statement is there, its values are not
    assert answer not in shown
