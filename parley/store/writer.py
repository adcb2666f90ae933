"""Where a turn's writes run: one writer that takes whatever writes are queued and commits them together.

A write is a plain function of a synchronous SQLAlchemy ``Connection`` (SQLAlchemy Core, a few statements).
A writer takes what is queued (up to ``MAX_BATCH`` writes), runs it all in one transaction and commits once,
then wakes the waiting turns. Under load that is one BEGIN/COMMIT (and on SQLite one thread hop) per batch
instead of per write; the profiles behind this are in bench/results/report.md.

- SQLite, which takes one writer at a time anyway: a thread holding one connection, ``BEGIN IMMEDIATE``.
  Its commits never checkpoint the WAL themselves (SQLite's automatic checkpoint would copy pages into
  the database file inside whichever commit crosses 1,000 pages, a batch of several milliseconds every
  second under load, which every turn queued behind it waits for): a second thread does, on its own
  connection, with PASSIVE checkpoints that never block the writer.
- PostgreSQL: lanes of asyncio tasks, each running its batches on one pooled connection through
  ``AsyncConnection.run_sync``, on an event loop of their own in a thread (``ThreadWriter``), so that a
  batch's round trips never wait for the server's busy loop. Writes to one session queue behind each other
  in order; a REST edit holding a session's row lock makes the batch wait for it. (An in-memory SQLite,
  which a second connection could not see, runs the same lanes on the server's loop: ``TaskWriter``.)

The contract of a write function: it reads first and raises ``ParleyError`` (a refusal such as an unknown
session) only before its first write, so a refusal never leaves a half-written turn in a shared batch.
Any other failure rolls the batch back and each of its writes is retried alone, so only the failing one
fails.
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
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.errors import DatabaseFailed, ParleyError
from parley.store.db import SQLITE_BUSY_TIMEOUT_MS, sqlite_pragmas
from parley.store.db import create_engine as create_async_engine

log = logging.getLogger("parley.store")

T = TypeVar("T")
Write = Callable[[Connection], T]
MAX_BATCH = 64
LANES = 8  # PostgreSQL: batches in flight at once, a connection each (beside the server's pool of 20)
CHECKPOINT_EVERY_S = 0.5  # SQLite: at most one WAL checkpoint this often, and only after writes

__all__ = ["SqliteWriter", "TaskWriter", "ThreadWriter", "Writer", "run_batch", "writer_for"]


class Writer(Protocol):
    @property
    def engine(self) -> Engine:
        """The engine the writes go through (for listeners such as a test counting statements)."""
        ...

    async def run(self, write: Write[T]) -> T: ...

    async def close(self) -> None: ...


def writer_for(engine: AsyncEngine) -> Writer:
    url = engine.url
    if url.get_backend_name() == "sqlite":
        if url.database not in (None, "", ":memory:"):
            return SqliteWriter(url.render_as_string(hide_password=False))
        return TaskWriter(engine)  # a second engine (or thread) would not see an in-memory database
    return ThreadWriter(url.render_as_string(hide_password=False))


_STOP = object()
_Job = tuple[Callable[[Connection], Any], "asyncio.Future[Any]"]
_Outcome = tuple[_Job, Any, bool]  # (job, result or exception, ok)


class SqliteWriter:
    """The single SQLite writer: a thread, a queue, group commit. Started by the first write."""

    def __init__(self, url: str) -> None:
        sync_url = make_url(url).set(drivername="sqlite+pysqlite")
        timeout = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        self._engine = create_engine(sync_url, connect_args=timeout, hide_parameters=True)  # user text
        event.listen(self._engine, "connect", _autocommit_driver)
        event.listen(self._engine, "begin", _begin_immediate)
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._wal = WalCheckpointer(self._engine)
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
            self._wal.start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((write, future))
        # A cancelled caller cancels only its future: the write is queued and happens, whole, regardless.
        return await future

    async def close(self) -> None:
        """Finish what is queued, then stop the thread and close its connection."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._wal.stop)  # a last checkpoint, then its connection closes
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
                        outcomes = run_batch(conn, batch)
                        self._settle(outcomes)
                        self._wal.written()
                        if _failed(outcomes):  # the next batch gets a fresh connection
                            with contextlib.suppress(Exception):
                                conn.invalidate()
                            conn = None
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

    def _settle(self, outcomes: list[_Outcome]) -> None:
        """Hand the outcomes to the event loop: one wake-up for the whole batch."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
            self._loop.call_soon_threadsafe(_resolve, outcomes)


class WalCheckpointer:
    """Checkpoints the SQLite writer's WAL from a thread of its own, at most every ``every_s`` and only
    after writes. PASSIVE: it copies what no reader still needs and never waits for, or blocks, the writer
    (SQLite restarts the WAL from its start once a checkpoint has caught up), so the WAL stays small
    without any commit paying for it. ``stop`` runs a last, complete checkpoint."""

    def __init__(self, engine: Engine, every_s: float = CHECKPOINT_EVERY_S) -> None:
        self._engine = engine
        self._every = every_s
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpointed = threading.Event()  # set by every completed checkpoint (tests wait on it)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="parley-sqlite-wal", daemon=True)
            self._thread.start()

    def written(self) -> None:
        self._dirty.set()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        self._dirty.set()
        self._thread.join()
        self._thread = None

    def _serve(self) -> None:
        try:
            # The driver's connection, outside any transaction (a SQLAlchemy Connection would begin
            # one, and the writer engine's begin takes the write lock).
            conn = self._engine.raw_connection()
        except Exception:  # no connection: the WAL only grows (reads stay right); say so once
            log.exception("the SQLite WAL checkpointer could not connect")
            return
        try:
            while True:
                self._dirty.wait()
                if self._stopping.is_set():
                    self._checkpoint(conn, "TRUNCATE")
                    return
                self._dirty.clear()
                self._checkpoint(conn, "PASSIVE")
                self._stopping.wait(self._every)
        finally:
            conn.close()

    def _checkpoint(self, conn: Any, mode: str) -> None:
        try:
            conn.cursor().execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        except Exception as exc:  # busy or locked: the next round tries again
            log.debug("WAL checkpoint (%s) skipped: %r", mode, exc)
        else:
            self.checkpointed.set()


class TaskWriter:
    """The writer as asyncio tasks: ``lanes`` of them, each running its batches on one pooled connection.

    One lane would wait on one database round trip at a time. Several lanes overlap them; a write goes to
    the lane of its ``lane_key`` (the session, or the message), so two batches never hold locks on the
    same session and cannot deadlock each other. Writes without a key (a new session) take turns.
    """

    def __init__(self, engine: AsyncEngine, lanes: int = LANES) -> None:
        self._engine = engine
        self._lanes = [_Lane(engine, n) for n in range(lanes)]
        self._next = 0
        self._closed = False

    @property
    def engine(self) -> Engine:
        return self._engine.sync_engine

    async def run(self, write: Write[T]) -> T:
        # A cancelled caller cancels only its future: the write is queued and happens, whole, regardless.
        return await self.submit(write)

    def submit(self, write: Write[T]) -> asyncio.Future[T]:
        """Queue ``write`` in its lane (on the running loop); its future has the result."""
        if self._closed:
            raise DatabaseFailed("The database is closed.")
        key = getattr(write, "lane_key", None)
        if key is None:
            self._next += 1
            key = self._next
        return self._lanes[hash(key) % len(self._lanes)].submit(write)

    async def close(self) -> None:
        self._closed = True
        await asyncio.gather(*(lane.close() for lane in self._lanes))


class ThreadWriter:
    """PostgreSQL: a ``TaskWriter`` on an event loop of its own, in a thread, with an engine of its own.

    On the server's event loop each round trip of a batch (BEGIN, each statement, COMMIT) waits for the
    loop to come round again, which under load is one pass over every streaming turn: milliseconds, several
    times a turn, and the lanes queue behind it. On a loop that does nothing else a round trip costs what
    the database takes, and the server's loop is woken once per write, when its result is in (measured in
    bench/findings.md). Writes to one session still share a lane, in order.
    """

    def __init__(self, url: str, lanes: int = LANES) -> None:
        self._async_engine = create_async_engine(url, pool_size=lanes, max_overflow=0)  # a connection a lane
        self._tasks = TaskWriter(self._async_engine, lanes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def engine(self) -> Engine:
        return self._async_engine.sync_engine

    async def run(self, write: Write[T]) -> T:
        if self._closed:
            raise DatabaseFailed("The database is closed.")
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="parley-pg-writer", daemon=True
            )
            self._thread.start()
        caller = asyncio.get_running_loop()
        future: asyncio.Future[T] = caller.create_future()
        self._loop.call_soon_threadsafe(self._submit, write, future, caller)
        # A cancelled caller cancels only its future: the write is queued and happens, whole, regardless.
        return await future

    def _submit(self, write: Write[T], future: asyncio.Future[T], caller: asyncio.AbstractEventLoop) -> None:
        """On the writer's loop: queue the write; hand its outcome to the caller's loop when it is in."""

        def settled(done: asyncio.Future[T]) -> None:
            if done.cancelled():
                outcome: tuple[Any, BaseException | None] = (None, DatabaseFailed("The write was not done."))
            elif done.exception() is not None:
                outcome = (None, done.exception())
            else:
                outcome = (done.result(), None)
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody is waiting
                caller.call_soon_threadsafe(_hand_over, future, *outcome)

        try:
            self._tasks.submit(write).add_done_callback(settled)
        except DatabaseFailed as closed:
            caller.call_soon_threadsafe(_hand_over, future, None, closed)

    async def close(self) -> None:
        """Finish what is queued, close the engine's connections, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        if self._loop is None:
            await self._async_engine.dispose()
            return
        loop, thread = self._loop, self._thread
        assert thread is not None
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._shut(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()

    async def _shut(self) -> None:
        await self._tasks.close()
        await self._async_engine.dispose()


def _hand_over(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class _Lane:
    def __init__(self, engine: AsyncEngine, number: int) -> None:
        self._engine = engine
        self._name = f"parley-writer-{number}"
        self._queue: asyncio.Queue[_Job | object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def submit(self, write: Write[T]) -> asyncio.Future[T]:
        if self._task is None:
            self._task = asyncio.create_task(self._serve(), name=self._name)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((write, future))
        return future

    async def close(self) -> None:
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task

    async def _serve(self) -> None:
        while True:
            batch, stop = await self._take()
            if batch:
                try:
                    async with self._engine.connect() as conn:
                        outcomes = await conn.run_sync(run_batch, batch)
                        if _failed(outcomes):
                            await _discard(conn)
                except Exception as exc:  # no connection: this batch fails, the next one tries again
                    outcomes = [(job, exc, False) for job in batch]
                _resolve(outcomes)
            if stop:
                return

    async def _take(self) -> tuple[list[_Job], bool]:
        batch: list[_Job] = []
        item = await self._queue.get()
        while item is not _STOP:
            batch.append(item)  # type: ignore[arg-type]
            if len(batch) >= MAX_BATCH or self._queue.empty():
                return batch, False
            item = self._queue.get_nowait()
        return batch, True


def _failed(outcomes: list[_Outcome]) -> bool:
    """A write of the batch failed, other than by a refusal."""
    return any(not ok and not isinstance(value, ParleyError) for _, value, ok in outcomes)


async def _discard(conn: AsyncConnection) -> None:
    """A write failed on this connection: never hand it out again. The driver may not know it is broken
    (asyncpg's "cannot switch to state" after its backend was terminated), and a retry must get a fresh
    connection rather than the same dead one."""
    with contextlib.suppress(Exception):
        await conn.invalidate()


def run_batch(conn: Connection, batch: list[_Job]) -> list[_Outcome]:
    """Run the writes in one transaction; if one fails, roll back and run each alone."""
    try:
        with conn.begin():
            return [(job, *_attempt(conn, job[0])) for job in batch]
    except Exception as exc:
        if len(batch) == 1:
            return [(batch[0], exc, False)]
        log.warning("a batch of %d writes failed (%s); retrying each alone", len(batch), exc)
        return [_run_alone(conn, job) for job in batch]


def _run_alone(conn: Connection, job: _Job) -> _Outcome:
    try:
        with conn.begin():
            return (job, *_attempt(conn, job[0]))
    except Exception as exc:
        return (job, exc, False)


def _attempt(conn: Connection, write: Callable[[Connection], Any]) -> tuple[Any, bool]:
    """(result, True), or (a refusal, False); any other exception escapes and fails the batch."""
    try:
        return write(conn), True
    except ParleyError as refusal:
        return refusal, False


def _resolve(outcomes: list[_Outcome]) -> None:
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
    # Commits never checkpoint: the WalCheckpointer does, off the writer's thread.
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
