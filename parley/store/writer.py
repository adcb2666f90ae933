"""Where a turn's writes run: one writer thread that commits many turns together on SQLite, a pooled
async transaction per write elsewhere.

A write is a plain function of a synchronous SQLAlchemy ``Connection`` (SQLAlchemy Core, a few statements).
On SQLite, which takes one writer at a time anyway, every such function goes to a single thread holding
one connection. The thread takes whatever is queued (up to ``MAX_BATCH`` writes), runs it all in one
``BEGIN IMMEDIATE`` transaction and commits once, then wakes the event loop once for the whole batch.
Under load that is one commit and one thread hop per batch instead of several per turn; the profile of
the old path (an ORM session per write through aiosqlite, a hop per statement) is in bench/results.

The contract of a write function: it reads first and raises ``ParleyError`` (a refusal such as an unknown
session) only before its first write, so a refusal never leaves a half-written turn in a shared batch.
Any other failure rolls the batch back and each of its writes is retried alone, so only the failing one
fails.

Other databases (and an in-memory SQLite, which a second connection could not see) run each write in its
own transaction on the async engine, through ``AsyncConnection.run_sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.errors import DatabaseFailed, ParleyError
from parley.store.db import SQLITE_BUSY_TIMEOUT_MS, WriteGate, sqlite_pragmas

log = logging.getLogger("parley.store")

T = TypeVar("T")
Write = Callable[[Connection], T]
MAX_BATCH = 64

__all__ = ["AsyncWriter", "SqliteWriter", "Writer", "writer_for"]


class Writer(Protocol):
    @property
    def engine(self) -> Engine:
        """The engine the writes go through (for listeners such as a test counting statements)."""
        ...

    async def run(self, write: Write[T]) -> T: ...

    async def close(self) -> None: ...


def writer_for(engine: AsyncEngine, gate: WriteGate) -> Writer:
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return SqliteWriter(url.render_as_string(hide_password=False))
    return AsyncWriter(engine, gate)


class AsyncWriter:
    """One transaction per write on the async engine (PostgreSQL: its own row locks order the writers)."""

    def __init__(self, engine: AsyncEngine, gate: WriteGate) -> None:
        self._engine = engine
        self._gate = gate

    @property
    def engine(self) -> Engine:
        return self._engine.sync_engine

    async def run(self, write: Write[T]) -> T:
        async with self._gate(), self._engine.begin() as conn:
            return await conn.run_sync(write)

    async def close(self) -> None:
        return None


_STOP = object()
_Job = tuple[Callable[[Connection], Any], "asyncio.Future[Any]"]


class SqliteWriter:
    """The single SQLite writer: a thread, a queue, group commit. Started by the first write."""

    def __init__(self, url: str) -> None:
        sync_url = make_url(url).set(drivername="sqlite+pysqlite")
        self._engine = create_engine(sync_url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(self._engine, "connect", _autocommit_driver)
        event.listen(self._engine, "begin", _begin_immediate)
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def engine(self) -> Engine:
        return self._engine

    async def run(self, write: Write[T]) -> T:
        if self._closed:
            raise DatabaseFailed("The database is closed.")
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._serve, name="parley-sqlite-writer", daemon=True)
            self._thread.start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((write, future))
        # Shielded: a cancelled caller stops waiting, but a write already queued still happens, whole.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Finish what is queued, then stop the thread and close its connection."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
        self._engine.dispose()

    # -- the writer thread -------------------------------------------------------------------------

    def _serve(self) -> None:
        conn: Connection | None = None
        try:
            while True:
                batch, stop = self._take()
                if batch:
                    try:
                        conn = conn or self._engine.connect()
                    except Exception as exc:  # the next batch tries again
                        self._settle([(job, exc, False) for job in batch])
                    else:
                        self._settle(self._run_batch(conn, batch))
                if stop:
                    return
        finally:
            if conn is not None:
                conn.close()

    def _take(self) -> tuple[list[_Job], bool]:
        """Block for the first write, then take whatever else is already queued."""
        batch: list[_Job] = []
        item = self._queue.get()
        while item is not _STOP:
            batch.append(item)  # type: ignore[arg-type]
            if len(batch) >= MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _run_batch(self, conn: Connection, batch: list[_Job]) -> list[tuple[_Job, Any, bool]]:
        try:
            with conn.begin():
                return [(job, *_attempt(conn, job[0])) for job in batch]
        except Exception as exc:
            if len(batch) == 1:
                return [(batch[0], exc, False)]
            log.warning("a batch of %d writes failed (%s); retrying each alone", len(batch), exc)
            return [self._run_alone(conn, job) for job in batch]

    @staticmethod
    def _run_alone(conn: Connection, job: _Job) -> tuple[_Job, Any, bool]:
        try:
            with conn.begin():
                return (job, *_attempt(conn, job[0]))
        except Exception as exc:
            return (job, exc, False)

    def _settle(self, outcomes: list[tuple[_Job, Any, bool]]) -> None:
        """Hand the outcomes to the event loop: one wake-up for the whole batch."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
            self._loop.call_soon_threadsafe(_resolve, outcomes)


def _attempt(conn: Connection, write: Callable[[Connection], Any]) -> tuple[Any, bool]:
    """(result, True), or (a refusal, False); any other exception escapes and fails the batch."""
    try:
        return write(conn), True
    except ParleyError as refusal:
        return refusal, False


def _resolve(outcomes: list[tuple[_Job, Any, bool]]) -> None:
    for (_write, future), value, ok in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _autocommit_driver(dbapi_connection: Any, record: Any) -> None:
    # The driver's own implicit BEGIN would come only before the first write, after the reads; the
    # "begin" hook below starts every transaction explicitly instead, taking the write lock up front.
    dbapi_connection.isolation_level = None
    sqlite_pragmas(dbapi_connection, record)


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
