"""The database engine (SQLite with WAL and a busy timeout, or PostgreSQL via asyncpg) and migrations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as DbSession

from parley.errors import DatabaseFailed

__all__ = [
    "DbSession",
    "Migration",
    "WriteGate",
    "alembic_config",
    "create_engine",
    "migrate",
    "read_again_if_dead",
    "read_retried",
    "sessionmaker",
    "sqlite_pragmas",
]

C = TypeVar("C")
R = TypeVar("R")
log = logging.getLogger("parley.store")

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 5000
IDLE_PING_AFTER_S = 10.0


def create_engine(url: str, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys. Its errors never
    show their SQL parameters (``hide_parameters``): they hold the users' questions and the answers.

    On PostgreSQL the turns' own writes have an engine of their own (``writer.ThreadWriter``): this one's
    pool serves the rest (reads, REST edits, recovery)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # Overflow connections are opened and closed again per burst: that churn cost more than queueing.
        engine = create_async_engine(
            url, pool_size=pool_size, max_overflow=max_overflow, hide_parameters=True
        )
        event.listen(engine.sync_engine, "checkin", _note_idle)
        event.listen(engine.sync_engine, "checkout", _ping_if_idle)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, hide_parameters=True
    )
    event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    return engine


def _note_idle(_dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Ping a pooled connection before use only when it sat idle for a while (the database may have
    restarted meanwhile); a broken one is replaced. ``pool_pre_ping`` would ping on every checkout: on
    asyncpg three round trips (BEGIN, a query, ROLLBACK) before each turn's write, a third of its cost."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_AFTER_S:
        return
    try:
        dbapi_connection.ping()
    except Exception as exc:
        raise DisconnectionError("the pooled connection is gone") from exc


async def read_retried(
    connect: Callable[[], contextlib.AbstractAsyncContextManager[C]],
    read: Callable[[C], Awaitable[R]],
    failure: str,
) -> R:
    """``read_again_if_dead``, with any failure as ``DatabaseFailed`` saying ``failure``."""
    try:
        return await read_again_if_dead(connect, read)
    except SQLAlchemyError as exc:
        raise DatabaseFailed(failure) from exc


async def read_again_if_dead(
    connect: Callable[[], contextlib.AbstractAsyncContextManager[C]],
    read: Callable[[C], Awaitable[R]],
) -> R:
    """Run ``read`` on a connection (or session) from ``connect``; when that pooled connection turns out
    dead, once more on a fresh one.

    After the database restarts or its backends are terminated, every pooled connection is dead, and the
    first statement on each one is what finds out (SQLAlchemy then marks the error ``connection_invalidated``
    and replaces the pool's older connections as they are checked out). A read changes nothing, so running
    it again is safe; writes are not retried here (the turns' writes are, by ``Store._retried``, as they
    recognise their own earlier commit). Cheaper than ``pool_pre_ping``, which costs a round trip on every
    checkout to catch the same rare case.
    """
    try:
        async with connect() as handle:
            return await read(handle)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.info("a read found its pooled connection dead; reading again on a fresh one")
    async with connect() as handle:
        return await read(handle)


class WriteGate:
    """Held while writing. SQLite takes one writer at a time; queueing writers here, in order, beats
    queueing them in SQLite's busy handler, which sleeps (up to 100 ms a try) and so adds latency to every
    turn under load. Other databases need no gate."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    def __call__(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._lock if self._lock is not None else contextlib.nullcontext()


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[DbSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


MIGRATION_LOCK = 0x7061726C6579  # "parley": the advisory lock key of migrations


async def migrate(engine: AsyncEngine) -> list[Migration]:
    """Bring the schema to the newest migration (``alembic upgrade head``) on this engine; returns the
    migrations applied, oldest first. On PostgreSQL, processes starting together on one database take
    turns (a transaction-scoped advisory lock), so one migrates and the others find the schema current."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        return await conn.run_sync(_upgrade, engine.url.render_as_string(hide_password=False))


@dataclass(frozen=True)
class Migration:
    revision: str
    title: str  # the first line of its docstring


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection, url: str) -> list[Migration]:
    config = alembic_config(url)
    config.attributes["connection"] = connection
    before = current_revision(connection)
    command.upgrade(config, "head")
    after = current_revision(connection)
    if after is None or after == before:
        return []
    scripts = ScriptDirectory.from_config(config).iterate_revisions(after, before)
    return [Migration(s.revision, (s.doc or "").strip().rstrip(".")) for s in reversed(list(scripts))]
