"""No answer lost to a dead connection: every failure of a store write is ``DatabaseFailed``, and the final
write of an answer is tried again, on a fresh connection, when the one it ran on died.

1. What a user reported, done as they did it: the server's PostgreSQL backends terminated again and again
   while forty answers stream (it left about one answer in forty ``streaming``, cut at its last checkpoint).
2. The pieces on ``Store`` itself, on SQLite and PostgreSQL: any exception is ``DatabaseFailed``, the
   connection a write failed on is not used again, ``finish_turn`` retries and says when the row was closed.
3. Through a live server: a final write that fails once still ends the turn ``completed``, also when the
   write had committed and only its reply was lost; so does one whose connection was terminated under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, make_url

from parley.errors import DatabaseFailed, ValidationFailed
from parley.store import repository
from parley.store.db import create_engine, migrate
from parley.store.repository import Store
from parley.store.tables import ChatSession, Message
from parley.store.turns import FinishTurn, StartTurn, TurnRecord
from parley.store.writer import Write
from tests.conftest import PG_ADMIN_DSN, LiveServer, live_server, make_settings
from tests.invariants import Frame, TurnSummary, check_turn
from tests.wsclient import ChatClient, chat_frame

T = TypeVar("T")

# Each waits (up to 5 s) until its backend has exited.
TERMINATE = (
    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
    " WHERE datname = $1 AND pid <> pg_backend_pid()"
)


def database_of(url: str) -> str:
    name = make_url(url).database
    assert name
    return name


async def terminate_backends(admin: asyncpg.Connection, database: str) -> int:
    """Terminate every backend connected to ``database`` (the server's); return how many, once gone."""
    return sum(1 for row in await admin.fetch(TERMINATE, database) if row[0])


@contextlib.asynccontextmanager
async def admin_connection() -> AsyncIterator[asyncpg.Connection]:
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        yield admin
    finally:
        await admin.close()


async def stored(url: str, customers: list[str]) -> tuple[int, list[Any]]:
    """What the database holds for the customers, read on an engine of its own: how many sessions, and
    each message's id, request_id, role, status and content."""
    engine = create_engine(url)
    columns = (Message.id, Message.request_id, Message.role, Message.status, Message.content)
    try:
        async with engine.connect() as conn:
            sessions = await conn.scalar(
                select(func.count()).select_from(ChatSession).where(ChatSession.customer_id.in_(customers))
            )
            result = await conn.execute(select(*columns).where(Message.customer_id.in_(customers)))
            return int(sessions or 0), list(result.all())
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------------------------------
# 1. Backends terminated while forty answers stream


CONNECTIONS = 20
TURNS_EACH = 2  # sent at once: the second queues behind the first and starts as it ends
DELAY_MS = 40
STRESS_TIMEOUT_S = 25


@dataclass
class Plan:
    """One turn: its prompt, and the answer the demo model streams in ``chunks`` deltas."""

    connection: int
    index: int
    chunks: int
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def prompt(self) -> str:
        return f"fault turn {self.connection}.{self.index}"

    @property
    def answer(self) -> str:
        return " ".join(f"w{self.connection}.{self.index}.{k}" for k in range(self.chunks))

    def frame(self) -> Frame:
        options = {"text": self.answer, "chunks": self.chunks, "delay_ms": DELAY_MS}
        return chat_frame(self.prompt, request_id=self.request_id, options=options)


class Killer:
    """Terminates the server's backends whenever asked, one round at a time (asks during a round merge
    into the next one)."""

    def __init__(self, admin: asyncpg.Connection, database: str, rounds: int) -> None:
        self._admin = admin
        self._database = database
        self._limit = rounds
        self._wanted = asyncio.Event()
        self.killed: list[int] = []  # backends terminated, per round

    def request(self) -> None:
        self._wanted.set()

    async def run(self) -> None:
        while len(self.killed) < self._limit:
            await self._wanted.wait()
            self._wanted.clear()
            self.killed.append(await terminate_backends(self._admin, self._database))


@dataclass
class Monitor:
    """Watches the turns' text events and asks for terminations: once every connection's first answer is
    streaming (checkpoints are being written), and each time an answer is one delta short of its end (its
    final write is next, and the next turn on its connection starts)."""

    plans: dict[str, Plan]
    killer: Killer
    texts: dict[str, int] = field(default_factory=dict)
    first_streaming: set[int] = field(default_factory=set)

    def saw(self, frame: Frame) -> None:
        if frame.get("type") != "text":
            return
        plan = self.plans[str(frame["request_id"])]
        count = self.texts[plan.request_id] = self.texts.get(plan.request_id, 0) + 1
        if count == 1 and plan.index == 0:
            self.first_streaming.add(plan.connection)
            if len(self.first_streaming) == CONNECTIONS:
                self.killer.request()
        if count == plan.chunks - 1:
            self.killer.request()


async def converse(client: ChatClient, plans: list[Plan], monitor: Monitor) -> None:
    for plan in plans:
        await client.send(plan.frame())
    while not all(client.finished(plan.request_id) for plan in plans):
        monitor.saw(await client.pump())


def refused_before_streaming(summary: TurnSummary) -> bool:
    """The turn's question could not be stored: refused with ``database_error``, nothing streamed."""
    return (
        summary.status == "error"
        and summary.error is not None
        and (summary.error["stage"], summary.error["code"]) == ("database", "database_error")
        and summary.kinds == ["working", "error", "fullProcessComplete"]
    )


async def test_terminated_backends_lose_no_answer(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Forty turns on twenty connections; the server's PostgreSQL backends are terminated mid-stream and
    just before final writes, some forty times. Each turn ends ``completed`` with its answer stored exactly
    as streamed, or (a question written at the very moment of a termination) is refused with
    ``database_error`` before streaming and nothing of it is stored. No answer is left ``streaming``."""
    settings = make_settings(tmp_path, postgres_url, checkpoint_interval_s=0.2)
    run = uuid.uuid4().hex[:8]
    customers = [f"faults-{run}-{n}" for n in range(CONNECTIONS)]
    # 25 to 65 deltas of 40 ms: each answer streams for 1 to 2.6 s, a checkpoint every 0.2 s.
    plans = [[Plan(n, k, 25 + (n * 7 + k * 13) % 41) for k in range(TURNS_EACH)] for n in range(CONNECTIONS)]
    by_request = {plan.request_id: plan for mine in plans for plan in mine}

    async with admin_connection() as admin, live_server(settings) as live:
        clients = [await live.client(customer) for customer in customers]
        killer = Killer(admin, database_of(postgres_url), rounds=1 + len(by_request))
        killing = asyncio.create_task(killer.run())
        monitor = Monitor(by_request, killer)
        try:
            async with asyncio.timeout(STRESS_TIMEOUT_S):
                await asyncio.gather(*(converse(c, p, monitor) for c, p in zip(clients, plans, strict=True)))
        finally:
            killing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await killing
            for client in clients:
                await client.close()
        summaries = {rid: check_turn(c.turns[rid]) for c in clients for rid in list(c.turns)}
    sessions, rows = await stored(postgres_url, customers)

    assert set(summaries) == set(by_request)
    assert len(killer.killed) >= 3 and sum(killer.killed) > 0, (
        f"backends terminated per round: {killer.killed}"
    )
    failures = [r for r in caplog.records if r.name.startswith("parley") and "fail" in r.getMessage()]
    assert failures, "no write failed: the terminations hit nothing"
    logged = "\n".join(logging.Formatter().format(record) for record in caplog.records)
    # SQLAlchemy would show a long parameter cut in the middle: its first 30 characters are enough.
    leaked = [rid for rid, plan in by_request.items() if plan.answer[:30] in logged]
    assert not leaked, f"answer text in the logs of failed writes (SQL parameters shown): {leaked[:3]}"

    left_streaming = [(r.request_id, len(r.content)) for r in rows if r.status == "streaming"]
    assert not left_streaming, f"answers left streaming (request, characters stored): {left_streaming}"
    completed = {rid for rid, s in summaries.items() if s.status == "completed"}
    refused = {rid for rid, s in summaries.items() if refused_before_streaming(s)}
    others = {rid: summaries[rid].kinds[-3:] for rid in set(summaries) - completed - refused}
    assert not others, f"turns neither completed nor refused before streaming: {others}"

    assert {r.request_id for r in rows} == completed, "a refused turn left rows behind"
    assert sessions == len(completed) and len(rows) == 2 * len(completed)
    by_id = {row.id: row for row in rows}
    for rid in completed:
        summary, plan = summaries[rid], by_request[rid]
        assert summary.text == plan.answer, f"turn {rid} streamed something else"
        assert summary.ai_message_id is not None and summary.user_message_id is not None
        answer = by_id[uuid.UUID(summary.ai_message_id)]
        question = by_id[uuid.UUID(summary.user_message_id)]
        assert (answer.role, answer.status, answer.request_id, answer.content) == (
            "assistant",
            "completed",
            rid,
            summary.text,
        )
        assert (question.role, question.status, question.content) == ("user", "completed", plan.prompt)
    # A refusal is a turn that started at the very moment of a termination: most turns get through.
    assert len(completed) >= len(summaries) // 2, f"{len(refused)} of {len(summaries)} refused"


# --------------------------------------------------------------------------------------------------
# 2. Store: failures, retries, rows closed or gone


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    engine = create_engine(store_url)
    await migrate(engine)
    made = Store(engine)
    try:
        yield made
    finally:
        await made.close()
        await engine.dispose()


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> tuple[float, ...]:
    """The final write's pauses, shortened (the number of attempts stays)."""
    pauses = tuple(0.01 for _ in repository.FINAL_WRITE_BACKOFF_S)
    monkeypatch.setattr(repository, "FINAL_WRITE_BACKOFF_S", pauses)
    return pauses


def driver_errors() -> list[BaseException]:
    """What a write can fail with past SQLAlchemy: the driver's own errors, the socket's, a bug's."""
    return [
        asyncpg.InternalClientError("cannot switch to state 15; another operation is in progress"),
        ConnectionResetError(104, "Connection reset by peer"),
        OSError("the network is down"),
        RuntimeError("something else entirely"),
    ]


def error_id(error: BaseException) -> str:
    return type(error).__name__


class Flaky:
    """Stands in for the writer's ``run``: writes of type ``kind`` fail with ``failures``, one each,
    before (or, with ``after_write``, just after) they reach the real writer; then run as usual."""

    def __init__(
        self,
        run: Callable[[Write[Any]], Awaitable[Any]],
        failures: list[BaseException],
        kind: type = FinishTurn,
        after_write: bool = False,
    ) -> None:
        self._run = run
        self._failures = list(failures)
        self._kind = kind
        self._after_write = after_write
        self.attempts = 0

    async def __call__(self, write: Write[T]) -> T:
        if not isinstance(write, self._kind):
            result: T = await self._run(write)
            return result
        self.attempts += 1
        if self._failures and not self._after_write:
            raise self._failures.pop(0)
        result = await self._run(write)
        if self._failures:
            raise self._failures.pop(0)  # it was written, but the caller hears of a failure
        return result


def flaky(monkeypatch: pytest.MonkeyPatch, store: Store, failures: list[BaseException], **kw: Any) -> Flaky:
    fake = Flaky(store._writer.run, failures, **kw)
    monkeypatch.setattr(store._writer, "run", fake)
    return fake


async def start(store: Store, customer: str | None = None) -> TurnRecord:
    return await store.start_turn(
        customer_id=customer or f"c-{uuid.uuid4().hex[:8]}",
        session_id=None,
        prompt="question",
        model="demo",
        provider="demo",
        request_id=uuid.uuid4().hex,
    )


async def finish(store: Store, record: TurnRecord, content: str = "the whole answer") -> bool:
    return await store.finish_turn(
        session_id=record.session_id,
        ai_message_id=record.ai_message_id,
        content=content,
        reasoning=None,
        status="completed",
        usage={"input_tokens": 1, "output_tokens": 3},
        error_code=None,
        seq=7,
    )


async def answer_row(store: Store, record: TurnRecord) -> tuple[str, str, str | None, int | None] | None:
    """The answer's (status, content, error_code, stream_seq), or None when it is gone."""
    columns = (Message.status, Message.content, Message.error_code, Message.stream_seq)
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(*columns).where(Message.id == record.ai_message_id))).first()
    return None if row is None else (row[0], row[1], row[2], row[3])


@pytest.mark.parametrize("error", driver_errors(), ids=error_id)
async def test_any_write_failure_is_database_failed(
    store: Store, monkeypatch: pytest.MonkeyPatch, quick_retries: tuple[float, ...], error: BaseException
) -> None:
    record = await start(store)

    async def broken(write: Write[T]) -> T:
        raise error

    monkeypatch.setattr(store._writer, "run", broken)
    with pytest.raises(DatabaseFailed) as started:
        await start(store)
    with pytest.raises(DatabaseFailed) as checkpointed:
        await store.checkpoint(record.ai_message_id, "so far", None, 3)
    with pytest.raises(DatabaseFailed) as ran:
        await store.run(lambda conn: None, "The write failed.")
    for caught in (started, checkpointed, ran):
        assert caught.value.__cause__ is error
        assert (caught.value.stage, caught.value.code) == ("database", "database_error")
    assert ran.value.message == "The write failed."


@pytest.mark.parametrize("error", driver_errors(), ids=error_id)
async def test_a_write_raising_in_the_writer_is_database_failed(store: Store, error: BaseException) -> None:
    """Raised inside the real writer (the batch rolls back): ``DatabaseFailed``, and the next write works."""

    def write(conn: Connection) -> None:
        raise error

    with pytest.raises(DatabaseFailed) as caught:
        await store.run(write, "The write failed.")
    assert caught.value.__cause__ is error
    record = await start(store)
    assert await finish(store, record) is True


async def test_a_refusal_stays_a_refusal(store: Store) -> None:
    def refuse(conn: Connection) -> None:
        raise ValidationFailed("No such session.", code="session_not_found")

    with pytest.raises(ValidationFailed) as caught:
        await store.run(refuse, "The write failed.")
    assert caught.value.code == "session_not_found"


async def test_the_connection_a_write_failed_on_is_not_used_again(store: Store, store_url: str) -> None:
    """The driver may not know its connection is broken (asyncpg's "cannot switch to state" after its
    backend was terminated): after a failed write the writer never hands that connection out again."""
    postgres = store_url.startswith("postgresql")
    seen: list[tuple[Any, int | None]] = []  # (the DBAPI connection, its backend's pid on PostgreSQL)

    def note(conn: Connection) -> None:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() if postgres else None
        seen.append((conn.connection.dbapi_connection, pid))

    def note_and_fail(conn: Connection) -> None:
        note(conn)
        raise asyncpg.InternalClientError("cannot switch to state 15")

    await store.run(note, "The write failed.")
    with pytest.raises(DatabaseFailed):
        await store.run(note_and_fail, "The write failed.")
    failed, failed_pid = seen[-1]
    for _ in range(8):
        await store.run(note, "The write failed.")
    assert all(dbapi is not failed for dbapi, _ in seen[2:]), "the failed connection was used again"
    if postgres:
        assert failed_pid not in {pid for _, pid in seen[2:]}


@pytest.mark.parametrize(
    "failures",
    [
        [asyncpg.InternalClientError("cannot switch to state 15")],
        [ConnectionResetError(104, "Connection reset by peer"), OSError("the network is down")],
    ],
    ids=["once", "twice"],
)
async def test_finish_turn_succeeds_after_transient_failures(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    quick_retries: tuple[float, ...],
    failures: list[BaseException],
) -> None:
    record = await start(store)
    fake = flaky(monkeypatch, store, failures)
    assert await finish(store, record) is True
    assert fake.attempts == len(failures) + 1
    assert await answer_row(store, record) == ("completed", "the whole answer", None, 7)


async def test_finish_turn_gives_up_after_every_attempt_failed(
    store: Store, monkeypatch: pytest.MonkeyPatch, quick_retries: tuple[float, ...]
) -> None:
    record = await start(store)
    await store.checkpoint(record.ai_message_id, "the whole", None, 4)
    attempts = len(quick_retries) + 1
    fake = flaky(monkeypatch, store, [OSError(f"attempt {n}") for n in range(attempts + 1)])
    with pytest.raises(DatabaseFailed) as caught:
        await finish(store, record)
    assert fake.attempts == attempts
    assert isinstance(caught.value.__cause__, OSError) and str(caught.value.__cause__) == "attempt 3"
    assert await answer_row(store, record) == ("streaming", "the whole", None, 4)  # the last checkpoint


def test_the_real_pauses_are_short_and_growing() -> None:
    pauses = repository.FINAL_WRITE_BACKOFF_S
    assert len(pauses) >= 2 and list(pauses) == sorted(pauses) and pauses[0] > 0 and sum(pauses) < 5


async def test_finish_turn_is_false_when_the_row_was_closed_meanwhile(store: Store) -> None:
    """Recovery closed the answer (its server was taken for dead): neither a checkpoint nor the final
    write changes it, and ``finish_turn`` says so."""
    record = await start(store)
    await store.checkpoint(record.ai_message_id, "cut here", None, 2)
    closed = {"status": "error", "error_code": "interrupted"}
    async with store.engine.begin() as conn:
        await conn.execute(update(Message).where(Message.id == record.ai_message_id).values(**closed))
    await store.checkpoint(record.ai_message_id, "cut here and later", None, 5)
    assert await finish(store, record) is False
    assert await answer_row(store, record) == ("error", "cut here", "interrupted", 2)


async def test_finish_turn_is_true_when_the_row_is_gone(store: Store) -> None:
    """The session was deleted while its answer streamed: nothing to store, and nothing wrong."""
    customer = f"c-{uuid.uuid4().hex[:8]}"
    record = await start(store, customer)
    await store.history.delete(customer, record.session_id)
    assert await finish(store, record) is True
    assert await answer_row(store, record) is None
    async with store.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).where(ChatSession.id == record.session_id)) == 0


async def test_finish_turn_whose_write_landed_but_whose_reply_was_lost(
    store: Store, monkeypatch: pytest.MonkeyPatch, quick_retries: tuple[float, ...]
) -> None:
    """The connection dies after the database committed the final write but before the reply arrived
    (the failure the retry exists for, a moment later): the retry finds its own write, not a row closed by
    recovery. The answer is stored as completed, so the turn must not be reported as interrupted."""
    record = await start(store)
    fake = flaky(
        monkeypatch, store, [ConnectionResetError(104, "Connection reset by peer")], after_write=True
    )
    stored_now = await finish(store, record)
    assert fake.attempts == 2
    assert await answer_row(store, record) == ("completed", "the whole answer", None, 7)
    assert stored_now is True, "a completed answer was reported as closed by recovery"


# --------------------------------------------------------------------------------------------------
# 3. A live server whose final write fails once


async def stored_turn(live: LiveServer, summary: TurnSummary) -> list[tuple[str, str, str]]:
    """The turn's session as stored: (role, status, content) of each message."""
    session_id = next(e["session_id"] for e in summary.events if "session_id" in e)  # set once it is stored
    messages = await live.store.session_messages(uuid.UUID(session_id))
    return [(m.role, m.status, m.content) for m in messages]


async def test_a_final_write_failing_once_still_completes(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = flaky(monkeypatch, server.store, [asyncpg.InternalClientError("cannot switch to state 15")])
    async with await server.client() as client:
        summary = await client.turn(await client.chat("fail once", options={"chunks": 8, "delay_ms": 5}))
    assert summary.status == "completed" and "dbOperationExecuted" in summary.kinds, summary.kinds
    assert fake.attempts == 2
    assert summary.text and await stored_turn(server, summary) == [
        ("user", "completed", "fail once"),
        ("assistant", "completed", summary.text),
    ]


async def test_a_final_write_whose_reply_was_lost_still_completes(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final write committed, its connection died before the reply: the answer is stored completed,
    and the client must hear so (not an error claiming the answer was closed as interrupted)."""
    lost = ConnectionResetError(104, "Connection reset by peer")
    fake = flaky(monkeypatch, server.store, [lost], after_write=True)
    async with await server.client() as client:
        summary = await client.turn(await client.chat("reply lost", options={"chunks": 8, "delay_ms": 5}))
    assert fake.attempts == 2
    assert await stored_turn(server, summary) == [
        ("user", "completed", "reply lost"),
        ("assistant", "completed", summary.text),
    ]
    said = summary.error["code"] if summary.error else None
    assert summary.status == "completed" and "dbOperationExecuted" in summary.kinds, (
        said,
        summary.kinds[-3:],
    )


async def test_a_question_whose_reply_was_lost_leaves_no_answer_streaming(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The question and the empty answer row committed, the connection died before the reply: the turn
    must not be refused as "nothing was stored" while a ``streaming`` answer row stays behind (this
    server's lease is alive, so recovery never closes it). Either the turn goes on and completes, or it
    is refused and nothing of it is stored."""
    customer = f"c-{uuid.uuid4().hex[:8]}"
    lost = ConnectionResetError(104, "Connection reset by peer")
    fake = flaky(monkeypatch, server.store, [lost], kind=StartTurn, after_write=True)
    async with await server.client(customer) as client:
        rid = await client.chat("question reply lost", options={"chunks": 8, "delay_ms": 5})
        summary = await client.turn(rid)
    assert fake.attempts >= 1
    _, rows = await stored(server.store.engine.url.render_as_string(hide_password=False), [customer])
    statuses = sorted((r.role, r.status) for r in rows)
    if refused_before_streaming(summary):
        assert statuses == [], "refused as not stored, yet stored"
    else:
        assert summary.status == "completed", summary.kinds[-3:]
        assert statuses == [("assistant", "completed"), ("user", "completed")]


async def test_backends_terminated_just_before_the_final_write(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's failure, made certain: every backend of the server is gone when its final write starts,
    so the first attempt runs on a dead connection, and the retry on a fresh one."""
    settings = make_settings(tmp_path, postgres_url, checkpoint_interval_s=0.05)
    customer = f"c-{uuid.uuid4().hex[:8]}"
    async with admin_connection() as admin, live_server(settings) as live:
        real = live.store._writer.run
        attempts = 0

        async def terminate_first(write: Write[T]) -> T:
            nonlocal attempts
            if isinstance(write, FinishTurn):
                attempts += 1
                if attempts == 1:
                    assert await terminate_backends(admin, database_of(postgres_url)) > 0
            result: T = await real(write)
            return result

        monkeypatch.setattr(live.store._writer, "run", terminate_first)
        async with await live.client(customer) as client:
            rid = await client.chat("terminated", options={"chunks": 20, "delay_ms": 10})
            summary = await client.turn(rid)
    sessions, rows = await stored(postgres_url, [customer])
    assert summary.status == "completed" and "dbOperationExecuted" in summary.kinds, summary.kinds
    assert attempts >= 2, "the first attempt did not fail: the terminated connection was not used"
    assert sessions == 1 and sorted((r.role, r.status, r.content) for r in rows) == [
        ("assistant", "completed", summary.text),
        ("user", "completed", "terminated"),
    ]


# --------------------------------------------------------------------------------------------------
# 4. Reads on the dead connections a termination leaves in the pool


async def test_reads_after_the_backends_were_terminated_all_answer(tmp_path: Path, postgres_url: str) -> None:
    """Every pooled connection of the server is dead once its backends are terminated, and the first
    statement on each one is what finds out: a REST read that draws one reads again on a fresh connection.
    Nine reads at once (eight of the history, a health check), each on a pooled connection of its own,
    all answer 200; before, most answered 503."""
    customer = f"c-{uuid.uuid4().hex[:8]}"
    async with admin_connection() as admin, live_server(make_settings(tmp_path, postgres_url)) as live:
        async with await live.client(customer) as client:
            summary = await client.turn(await client.chat("Remember the turnip"))
        session = f"/api/v1/sessions/{summary.session_id}"
        paths = ["/api/v1/sessions", session, f"{session}/export", "/api/v1/search?q=turnip"] * 2
        paths.append("/healthz")
        async with live.http(customer) as http:

            async def read_all() -> list[tuple[str, int]]:
                answers = await asyncio.gather(*(http.get(path) for path in paths))
                return [(path, answer.status_code) for path, answer in zip(paths, answers, strict=True)]

            assert await read_all() == [(path, 200) for path in paths]  # the pool holds nine now
            assert await terminate_backends(admin, database_of(postgres_url)) > 0
            after = await read_all()
    assert after == [(path, 200) for path in paths]
