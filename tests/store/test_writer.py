"""The writers (SQLite's thread, PostgreSQL's lanes on a thread's own loop): group commit, and a batch
where one write fails or is refused loses no other write."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from parley.errors import DatabaseFailed, ValidationFailed
from parley.store.db import create_engine, migrate
from parley.store.tables import ChatSession, Message
from parley.store.turns import StartTurn
from parley.store.writer import SqliteWriter, ThreadWriter, Writer


@pytest.fixture
async def writer(store_url: str) -> AsyncIterator[Writer]:
    engine = create_engine(store_url)
    await migrate(engine)
    postgres = engine.dialect.name == "postgresql"
    made: Writer = ThreadWriter(store_url, lanes=1) if postgres else SqliteWriter(store_url)
    try:
        yield made
    finally:
        await made.close()
        await engine.dispose()


CUSTOMER = "c1"


def start(customer: str = CUSTOMER, session_id: uuid.UUID | None = None) -> StartTurn:
    return StartTurn(customer, session_id, "hello", "demo", "demo", uuid.uuid4().hex)


class Customer:
    """A customer of its own per test: the PostgreSQL database is shared by the whole run."""

    def __init__(self) -> None:
        self.id = f"c-{uuid.uuid4().hex[:8]}"

    def start(self, session_id: uuid.UUID | None = None) -> StartTurn:
        return start(self.id, session_id)

    def sessions(self, conn: Connection) -> int:
        mine = select(func.count()).select_from(ChatSession).where(ChatSession.customer_id == self.id)
        return int(conn.execute(mine).scalar_one())

    def messages(self, conn: Connection) -> int:
        mine = select(func.count()).select_from(Message).where(Message.customer_id == self.id)
        return int(conn.execute(mine).scalar_one())


class Gate:
    """A write that holds the writer thread until released, so the next writes queue up behind it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: Connection) -> None:
        self.entered.set()
        self.release.wait(10)


async def queued(writer: Writer, writes: list[Callable[[Connection], Any]]) -> list[asyncio.Future[Any]]:
    """Queue ``writes`` so that the writer takes them as one batch: a gate write holds the writer's thread
    (SQLite's, or the loop of PostgreSQL's lanes) while the others queue."""
    gate = Gate()
    held = asyncio.ensure_future(writer.run(gate))
    await asyncio.to_thread(gate.entered.wait, 10)
    futures: list[asyncio.Future[Any]] = [asyncio.ensure_future(writer.run(w)) for w in writes]
    await asyncio.sleep(0)  # every run() has queued its write
    gate.release.set()
    await held
    return futures


def begins(writer: Writer) -> list[str]:
    seen: list[str] = []

    def on_begin(conn: Any) -> None:
        seen.append("BEGIN")

    event.listen(writer.engine, "begin", on_begin)
    return seen


async def test_queued_writes_commit_together(writer: Writer) -> None:
    me = Customer()
    await writer.run(me.sessions)  # the writer is up
    seen = begins(writer)
    records = await asyncio.gather(*await queued(writer, [me.start() for _ in range(10)]))
    assert len({r.session_id for r in records}) == 10
    assert len(seen) == 2  # ten writes, one transaction (and the gate's)
    assert await writer.run(me.sessions) == 10


async def test_a_failing_write_fails_alone(writer: Writer) -> None:
    me = Customer()
    first = await writer.run(me.start())
    duplicate = StartTurn(me.id, None, "again", "demo", "demo", "r", ids=[first.session_id])
    good = [me.start() for _ in range(4)]
    futures = await queued(writer, [*good[:3], duplicate, good[3]])  # the same session id: a clash
    with pytest.raises(IntegrityError):
        await futures[3]
    done = await asyncio.gather(*futures[:3], futures[4])
    assert len({r.session_id for r in done}) == 4
    assert await writer.run(me.sessions) == 5


async def test_a_refused_write_leaves_the_batch_alone(writer: Writer) -> None:
    me, other = Customer(), Customer()
    mine = await writer.run(me.start())
    theirs, good = await queued(writer, [other.start(mine.session_id), me.start(mine.session_id)])
    with pytest.raises(ValidationFailed) as refused:
        await theirs
    assert refused.value.code == "session_not_found"
    assert (await good).history  # continued the first turn's session
    assert await writer.run(me.messages) == 4
    assert await writer.run(other.messages) == 0


async def test_a_cancelled_caller_still_gets_its_write(writer: Writer) -> None:
    me = Customer()
    gate = Gate()
    held = asyncio.ensure_future(writer.run(gate))
    await asyncio.to_thread(gate.entered.wait, 10)  # held: the write below cannot be done before the cancel
    waiting = asyncio.ensure_future(writer.run(me.start()))
    await asyncio.sleep(0)  # queued
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.release.set()
    await held
    assert await writer.run(me.sessions) == 1


async def test_close_finishes_queued_writes_then_refuses(writer: Writer) -> None:
    me = Customer()
    await writer.run(me.sessions)
    pending = [asyncio.ensure_future(writer.run(me.start())) for _ in range(5)]
    await asyncio.sleep(0)
    await writer.close()
    assert len(await asyncio.gather(*pending)) == 5
    with pytest.raises(DatabaseFailed):
        await writer.run(me.start())


async def test_postgres_lanes_keep_a_sessions_writes_in_order(postgres_url: str) -> None:
    """Four lanes; ten turns queued at once on one session all go to its lane, chained in order."""
    engine = create_engine(postgres_url)
    await migrate(engine)
    writer = ThreadWriter(postgres_url, lanes=4)
    try:
        me = Customer()
        first = await writer.run(me.start())
        seen = begins(writer)
        nexts = [StartTurn(me.id, first.session_id, f"q{n}", "demo", "demo", "r") for n in range(10)]
        records = await asyncio.gather(*await queued(writer, list(nexts)))
        assert len(seen) == 2  # the gate's transaction, and one for the ten
        for n, record in enumerate(records):  # each follows the one before (empty answers are not history)
            assert [m.content for m in record.history] == ["hello", *(f"q{k}" for k in range(n))]
    finally:
        await writer.close()
        await engine.dispose()


async def test_sqlite_commits_leave_the_wal_to_the_checkpointer(tmp_path: Path) -> None:
    """The writer's commits never checkpoint (that would stall every turn queued behind the commit that
    crosses SQLite's threshold); the checkpointer thread does, after writes, and truncates the WAL when
    the writer closes."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}"
    engine = create_engine(url)
    await migrate(engine)
    await engine.dispose()
    wal = tmp_path / "wal.db-wal"
    writer = SqliteWriter(url)
    try:
        autocheckpoint = await writer.run(
            lambda conn: conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
        )
        assert autocheckpoint == 0
        customer = Customer()
        for _ in range(3):
            await asyncio.gather(*(writer.run(customer.start()) for _ in range(20)))
        # The checkpointer's first round follows the first batch.
        assert await asyncio.to_thread(writer._wal.checkpointed.wait, 5), "no WAL checkpoint within 5 s"
        assert await writer.run(customer.sessions) == 60
    finally:
        await writer.close()
    assert not wal.exists() or wal.stat().st_size == 0  # the last checkpoint (TRUNCATE) emptied it
