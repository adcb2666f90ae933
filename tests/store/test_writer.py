"""The SQLite writer thread: group commit, and a batch where one write fails or refuses loses no other."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from parley.errors import DatabaseFailed, ValidationFailed
from parley.store.db import create_engine, migrate
from parley.store.tables import ChatSession
from parley.store.turns import StartTurn
from parley.store.writer import SqliteWriter


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[SqliteWriter]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    engine = create_engine(url)
    await migrate(engine)
    await engine.dispose()
    made = SqliteWriter(url)
    try:
        yield made
    finally:
        await made.close()


def start(customer: str = "c1", session_id: uuid.UUID | None = None) -> StartTurn:
    return StartTurn(customer, session_id, "hello", "demo", "demo", uuid.uuid4().hex)


def count_sessions(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(ChatSession)).scalar_one())


class Gate:
    """A write that holds the writer thread until released, so the next writes queue up behind it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: Connection) -> None:
        self.entered.set()
        self.release.wait(10)

    async def hold(self, writer: SqliteWriter) -> asyncio.Task[None]:
        task = asyncio.create_task(writer.run(self))
        await asyncio.to_thread(self.entered.wait, 10)
        return task


def begins(writer: SqliteWriter) -> list[str]:
    seen: list[str] = []

    def on_begin(conn: Any) -> None:
        seen.append("BEGIN")

    event.listen(writer.engine, "begin", on_begin)
    return seen


async def test_queued_writes_commit_together(writer: SqliteWriter) -> None:
    gate = Gate()
    held = await gate.hold(writer)
    seen = begins(writer)
    starts = [asyncio.ensure_future(writer.run(start())) for _ in range(10)]
    await asyncio.sleep(0)  # every run() has queued its write
    gate.release.set()
    records = await asyncio.gather(*starts)
    await held
    assert len({r.session_id for r in records}) == 10
    assert seen == ["BEGIN"]  # the ten writes queued behind the gate went in one transaction
    assert await writer.run(count_sessions) == 10


async def test_a_failing_write_fails_alone(writer: SqliteWriter) -> None:
    first = await writer.run(start())
    duplicate = StartTurn("c1", None, "again", "demo", "demo", "r", ids=[first.session_id])
    gate = Gate()
    held = await gate.hold(writer)
    good = [asyncio.ensure_future(writer.run(start())) for _ in range(3)]
    bad = asyncio.ensure_future(writer.run(duplicate))  # the same session id: a primary key clash
    more = asyncio.ensure_future(writer.run(start()))
    await asyncio.sleep(0)
    gate.release.set()
    await held
    with pytest.raises(IntegrityError):
        await bad
    assert len({r.session_id for r in await asyncio.gather(*good, more)}) == 4
    assert await writer.run(count_sessions) == 5


async def test_a_refused_write_leaves_the_batch_alone(writer: SqliteWriter) -> None:
    mine = await writer.run(start("c1"))
    gate = Gate()
    held = await gate.hold(writer)
    theirs = asyncio.ensure_future(writer.run(start("c2", mine.session_id)))  # another customer's
    good = asyncio.ensure_future(writer.run(start("c1", mine.session_id)))
    await asyncio.sleep(0)
    gate.release.set()
    await held
    with pytest.raises(ValidationFailed) as refused:
        await theirs
    assert refused.value.code == "session_not_found"
    assert (await good).history  # continued the first turn's session
    rows = await writer.run(lambda c: c.execute(text("SELECT count(*) FROM chat_messages")).scalar_one())
    assert rows == 4


async def test_a_cancelled_caller_still_gets_its_write(writer: SqliteWriter) -> None:
    gate = Gate()
    held = await gate.hold(writer)
    waiting = asyncio.ensure_future(writer.run(start()))
    await asyncio.sleep(0)
    waiting.cancel()
    gate.release.set()
    await held
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await writer.run(count_sessions) == 1


async def test_close_finishes_queued_writes_then_refuses(writer: SqliteWriter) -> None:
    queued = [asyncio.ensure_future(writer.run(start())) for _ in range(5)]
    await asyncio.sleep(0)
    await writer.close()
    assert len(await asyncio.gather(*queued)) == 5
    with pytest.raises(DatabaseFailed):
        await writer.run(start())
