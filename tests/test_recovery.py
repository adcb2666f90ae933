"""Recovery after a crash (parley/recovery.py): answers left ``streaming`` by a dead server process are
closed as ``error``/``interrupted`` with their last checkpoint; a live process's answers never are.

The first two tests run ``parley serve`` in subprocesses (each in its own process group, killed by group
in the fixture's teardown whatever happens); the third drives ``Lease`` on a store, with processes of
other hosts written into ``parley_processes`` by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar, cast

import httpx
import pytest
from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.exceptions import ConnectionClosed

from parley.auth import mint_token
from parley.recovery import Lease, host_key, new_process_id, pid_started
from parley.store.db import create_engine, migrate
from parley.store.owners import db_now
from parley.store.repository import Store
from parley.store.tables import ChatSession, Message, ServerProcess, utcnow
from parley.store.turns import StartTurn, TurnRecord
from tests.conftest import SECRET
from tests.invariants import Frame
from tests.metrics_helpers import scrape
from tests.test_cli import ServeProcess, cli_env, free_port
from tests.wsclient import ChatClient

T = TypeVar("T")
DbWrite = Callable[[Connection], None]

MESSAGES = cast("Table", Message.__table__)
PROCESSES = cast("Table", ServerProcess.__table__)
SESSIONS = cast("Table", ChatSession.__table__)

TURNS = 50
LONG = {"chunks": 2000, "delay_ms": 20}  # 40 s of streaming: far longer than any of these tests
CHECKPOINT_S = 0.2
POLL_S = 0.05
STREAM_TIMEOUT_S = 20.0


# -- the database, as the tests read it ------------------------------------------------------------


@dataclass(frozen=True)
class StoredMessage:
    role: str
    status: str
    content: str
    error_code: str | None
    request_id: str | None
    stream_seq: int | None
    owner_id: str | None


@dataclass(frozen=True)
class ProcessRow:
    id: str
    pid: int
    host_key: str | None
    pid_started: str | None
    started_at: float
    heartbeat_at: float


async def messages(engine: AsyncEngine, customer_id: str) -> list[StoredMessage]:
    """The customer's messages, oldest first (a turn's question sorts before its answer)."""
    columns = [MESSAGES.c[name] for name in StoredMessage.__dataclass_fields__]
    query = select(*columns).where(MESSAGES.c.customer_id == customer_id).order_by(MESSAGES.c.created_at)
    async with engine.connect() as conn:
        return [StoredMessage(**row._mapping) for row in await conn.execute(query)]


async def answers(engine: AsyncEngine, customer_id: str) -> dict[str, StoredMessage]:
    """The customer's answers by request_id."""
    return {
        m.request_id: m for m in await messages(engine, customer_id) if m.role == "assistant" and m.request_id
    }


async def processes(engine: AsyncEngine) -> dict[str, ProcessRow]:
    columns = [PROCESSES.c[name] for name in ProcessRow.__dataclass_fields__]
    async with engine.connect() as conn:
        return {row.id: ProcessRow(**row._mapping) for row in await conn.execute(select(*columns))}


async def db_clock(engine: AsyncEngine) -> float:
    """Now, in the seconds since the epoch that ``parley_processes`` holds (the database's clock)."""
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: float(c.execute(select(db_now(c))).scalar_one()))


async def poll(fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float, what: str) -> T:
    """Fetch until ``done`` holds for what was fetched; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await fetch()
        if done(value):
            return value
        if loop.time() > deadline:
            pytest.fail(f"{what}: not within {timeout}s; last seen {repr(value)[:3000]}")
        await asyncio.sleep(POLL_S)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite+aiosqlite:///{tmp_path / 'recovery.db'}"


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[AsyncEngine]:
    """The test's own engine on the servers' database, migrated (the servers' migrations are then no-ops)."""
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()


# -- `parley serve` subprocesses -------------------------------------------------------------------


@dataclass
class Servers:
    """Starts ``parley serve`` processes on one database; each in its own process group."""

    workdir: Path
    database_url: str
    started: list[ServeProcess] = field(default_factory=list)

    def spawn(self, name: str, lease_s: float) -> ServeProcess:
        port = free_port()
        env = cli_env(
            self.workdir / "data",
            PARLEY_DATABASE_URL=self.database_url,
            PARLEY_JWT_SECRET=SECRET,
            PARLEY_HOST="127.0.0.1",
            PARLEY_PORT=str(port),
            PARLEY_LOG_LEVEL="warning",
            PARLEY_CHECKPOINT_INTERVAL_S=str(CHECKPOINT_S),
            PARLEY_OWNER_LEASE_S=str(lease_s),
        )
        stdout_path, stderr_path = self.workdir / f"{name}.out", self.workdir / f"{name}.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "parley", "serve"],
                env=env,
                cwd=self.workdir,  # no .env file here
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, so that group can be killed whole
            )
        server = ServeProcess(proc, port, stdout_path, stderr_path)
        self.started.append(server)
        return server


def kill_group(server: ServeProcess) -> None:
    """SIGKILL the server's process group (its pgid is its pid) and reap it, as a supervisor would."""
    if server.proc.returncode is None:  # not reaped yet, so the group id is still this one's
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)


@pytest.fixture
def servers(tmp_path: Path, db_url: str) -> Iterator[Servers]:
    started = Servers(tmp_path, db_url)
    try:
        yield started
    finally:
        for server in started.started:
            kill_group(server)


def customer() -> str:
    return f"recovery-{uuid.uuid4().hex[:12]}"


# -- what the clients received ----------------------------------------------------------------------


def text_events(client: ChatClient, request_id: str) -> list[Frame]:
    return [e for e in client.turns.get(request_id, []) if e["type"] == "text"]


def received(client: ChatClient, request_id: str, up_to_seq: int | None = None) -> str:
    """The text deltas of the turn the client received (those with seq <= ``up_to_seq``)."""
    events = text_events(client, request_id)
    return "".join(e["content"] for e in events if up_to_seq is None or e["seq"] <= up_to_seq)


async def read_until_closed(client: ChatClient) -> None:
    """File every frame until the server goes away."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await client.pump(timeout=60)


async def stop_readers(readers: list[asyncio.Task[None]]) -> None:
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


async def close_all(clients: list[ChatClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def assert_closed_from_checkpoint(answer: StoredMessage, client: ChatClient, checkpoint: str) -> None:
    """An answer closed by recovery: error/interrupted, holding its last checkpoint — a non-empty prefix of
    what the client received, exactly the deltas up to the checkpoint's seq, and no older than
    ``checkpoint`` (its stored content read before the kill)."""
    rid = answer.request_id
    assert rid is not None
    assert (answer.status, answer.error_code) == ("error", "interrupted"), answer
    assert answer.content, f"{rid}: the closed answer lost its checkpoint"
    assert received(client, rid).startswith(answer.content), f"{rid}: stored text was never sent"
    assert answer.stream_seq is not None, f"{rid}: no stream_seq with the checkpoint"
    assert answer.content == received(client, rid, answer.stream_seq), f"{rid}: content is not seq's"
    assert answer.content.startswith(checkpoint), f"{rid}: older than a checkpoint read before the kill"


# -- 1. kill -9 mid-stream, restart ------------------------------------------------------------------


async def test_kill_9_mid_stream_then_a_restart_closes_every_answer_as_interrupted(
    servers: Servers, db: AsyncEngine
) -> None:
    lease_s = 30.0  # far longer than a restart takes, even on a busy machine
    who = customer()
    token = mint_token(SECRET, who, 600)
    first = servers.spawn("first", lease_s)
    await first.wait_healthy()

    clients = list(await asyncio.gather(*(ChatClient.open(first.ws_url, token) for _ in range(TURNS))))
    readers: list[asyncio.Task[None]] = []
    try:
        prompts = [f"Crash {i}: {uuid.uuid4().hex}" for i in range(TURNS)]
        rids = [await c.chat(p, options=LONG) for c, p in zip(clients, prompts, strict=True)]
        readers = [asyncio.create_task(read_until_closed(c)) for c in clients]
        by_rid = dict(zip(rids, clients, strict=True))

        def every_turn_streamed_and_checkpointed(rows: dict[str, StoredMessage]) -> bool:
            streamed = all(text_events(c, rid) for rid, c in by_rid.items())
            saved = len(rows) == TURNS and all(r.content for r in rows.values())
            return streamed and saved

        before = await poll(
            lambda: answers(db, who),
            every_turn_streamed_and_checkpointed,
            STREAM_TIMEOUT_S,
            "every turn streaming text with a checkpoint stored",
        )
        assert all(r.status == "streaming" for r in before.values())
        owners = {r.owner_id for r in before.values()}
        assert len(owners) == 1 and None not in owners, owners

        (owner,) = owners
        assert owner is not None
        lease_row = (await processes(db)).get(owner)
        assert lease_row is not None, "the streaming process holds no lease"
        last_beat = lease_row.heartbeat_at  # it may renew once more before the kill: never later
        kill_group(first)
        killed_at = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*readers), 10)  # every connection saw the server go
    finally:
        await stop_readers(readers)
        await close_all(clients)
    for rid, client in by_rid.items():
        assert not client.finished(rid), f"{rid} ended before the kill: not mid-stream"

    second = servers.spawn("second", lease_s)
    await second.wait_healthy()
    # Read at once: the dead process ran on this host, so the new one closed its answers as it started.
    after = await answers(db, who)
    within = time.monotonic() - killed_at
    assert within < lease_s, f"{within:.1f}s from the kill: not within the {lease_s}s lease"
    # The dead process's lease had not run out yet: it was seen to have exited, not to be late.
    assert await db_clock(db) - last_beat < lease_s

    assert set(after) == set(rids)
    for rid, client in by_rid.items():
        assert_closed_from_checkpoint(after[rid], client, before[rid].content)
    stored = await messages(db, who)
    assert [m.status for m in stored].count("streaming") == 0, "an answer is left streaming"
    questions = [(m.request_id, m.content, m.status, m.error_code) for m in stored if m.role == "user"]
    asked = [(rid, prompt, "completed", None) for rid, prompt in zip(rids, prompts, strict=True)]
    assert sorted(questions) == sorted(asked), "a question was lost or changed"
    assert owner not in await processes(db), "the dead process's lease row was not removed"

    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=second.http_url, headers=headers, timeout=10) as http:
        for rid, prompt in zip(rids, prompts, strict=True):
            session_id = text_events(by_rid[rid], rid)[0]["session_id"]
            response = await http.get(f"/api/v1/sessions/{session_id}")
            assert response.status_code == 200, response.text
            question, answer = response.json()["messages"]
            assert (question["role"], question["status"]) == ("user", "completed")
            assert question["content"] == prompt, "the question changed"
            assert question["request_id"] == answer["request_id"] == rid
            assert (answer["role"], answer["status"]) == ("assistant", "error")
            assert answer["error_code"] == "interrupted"
            assert answer["content"] == after[rid].content and answer["seq"] is None

    async with await ChatClient.open(second.ws_url, token) as client:
        old = rids[0]
        await client.send({"type": "resume", "request_id": old, "after_seq": after[old].stream_seq})
        refused = await client.next_other()
    assert (refused["type"], refused["code"], refused["request_id"]) == ("error", "stream_expired", old)
    assert "seq" not in refused
    now = await scrape(second.http_url)  # closed by the second's sweep: its metrics count them
    assert now.get("parley_turns_interrupted_total") == TURNS
    assert now.get("parley_resumes_total", outcome="expired") == 1


# -- 2. a live process's turns are never closed by another ----------------------------------------


async def test_a_live_process_keeps_its_turns_until_it_is_killed(servers: Servers, db: AsyncEngine) -> None:
    lease_s = 1.0
    renewals = 6  # of B's, a third of the lease apart: two whole lease periods
    who = customer()
    token = mint_token(SECRET, who, 600)
    a = servers.spawn("a", lease_s)
    await a.wait_healthy()

    kept = await ChatClient.open(a.ws_url, token)
    doomed = await ChatClient.open(a.ws_url, token)
    reader = asyncio.create_task(read_until_closed(doomed))
    try:
        kept_rid = await kept.chat("I finish normally", options=LONG)
        doomed_rid = await doomed.chat("I die with my server", options=LONG)
        await kept.wait_for(kept_rid, "text")
        checkpointed = await poll(
            lambda: answers(db, who),
            lambda rows: len(rows) == 2 and all(r.content for r in rows.values()),
            STREAM_TIMEOUT_S,
            "both of A's answers checkpointed",
        )
        (a_id,) = {r.owner_id for r in checkpointed.values()}
        assert a_id is not None

        b = servers.spawn("b", lease_s)
        await b.wait_healthy()  # B has registered and swept once, at its start

        heartbeats: set[float] = set()

        async def sample() -> ProcessRow | None:
            """B's row, after checking that A's answers are still streaming and A's lease is held."""
            rows = await answers(db, who)
            statuses = {rid: r.status for rid, r in rows.items()}
            assert statuses == {kept_rid: "streaming", doomed_rid: "streaming"}, "A's answer was closed"
            assert all(r.error_code is None for r in rows.values())
            known = await processes(db)
            assert a_id in known, "A's lease row was removed while A runs"
            mine = [p for p in known.values() if p.pid == b.proc.pid and p.id != a_id]
            if mine:
                heartbeats.add(mine[0].heartbeat_at)
            return mine[0] if mine else None

        b_row = await poll(
            sample,
            lambda _: len(heartbeats) > renewals,
            lease_s * renewals,
            f"B renewing its lease {renewals} times",
        )
        assert b_row is not None and b_row.heartbeat_at - b_row.started_at >= 1.5 * lease_s

        await kept.send({"type": "cancel", "request_id": kept_rid})
        summary = await kept.turn(kept_rid)
        assert summary.status == "cancelled" and summary.error is None
        finished = (await answers(db, who))[kept_rid]
        assert (finished.status, finished.error_code) == ("cancelled", None)
        assert finished.content == summary.text and summary.text

        still = (await answers(db, who))[doomed_rid]
        assert still.status == "streaming"
        kill_group(a)
        killed_at = time.monotonic()
        closed = await poll(
            lambda: answers(db, who),
            lambda rows: rows[doomed_rid].status != "streaming",
            5 * lease_s,
            "B closing the killed A's answer",
        )
        within = time.monotonic() - killed_at
        await asyncio.wait_for(reader, 10)
    finally:
        await stop_readers([reader])
        await close_all([kept, doomed])

    assert within < lease_s, f"B closed A's answer {within:.2f}s after the kill: not within the lease"
    assert_closed_from_checkpoint(closed[doomed_rid], doomed, still.content)
    assert closed[kept_rid] == finished, "the finished answer was touched again"
    known = await processes(db)
    assert a_id not in known, "A's lease row was not removed"
    assert any(p.pid == b.proc.pid for p in known.values()), "B's lease row is gone"


# -- 3. the lease path, at the store level ----------------------------------------------------------

OTHER_HOST = "00000000-0000-4000-8000-000000000000/pid:[4026531836]"  # another boot id: another machine
STALE_S = 60.0


def register(process_id: str, key: str | None, pid: int, started: str | None, age_s: float) -> DbWrite:
    """A process row whose heartbeat is ``age_s`` old on the database's clock."""

    def write(conn: Connection) -> None:
        now = db_now(conn)
        row = {"id": process_id, "host": "elsewhere", "pid": pid, "host_key": key, "pid_started": started}
        conn.execute(insert(PROCESSES).values(**row, started_at=now - age_s - 1, heartbeat_at=now - age_s))

    return write


def beat(process_id: str, age_s: float) -> DbWrite:
    def write(conn: Connection) -> None:
        conn.execute(
            update(PROCESSES).where(PROCESSES.c.id == process_id).values(heartbeat_at=db_now(conn) - age_s)
        )

    return write


def legacy(message_id: uuid.UUID, idle_s: float) -> DbWrite:
    """An answer as from before 0004: no owner, last written ``idle_s`` ago."""

    def write(conn: Connection) -> None:
        values = {"owner_id": None, "updated_at": utcnow() - timedelta(seconds=idle_s)}
        conn.execute(update(MESSAGES).where(MESSAGES.c.id == message_id).values(**values))

    return write


def forget(customer_id: str, process_ids: list[str]) -> DbWrite:
    def write(conn: Connection) -> None:
        conn.execute(delete(MESSAGES).where(MESSAGES.c.customer_id == customer_id))
        conn.execute(delete(SESSIONS).where(SESSIONS.c.customer_id == customer_id))
        conn.execute(delete(PROCESSES).where(PROCESSES.c.id.in_(process_ids)))

    return write


def exited_process() -> tuple[int, str]:
    """The pid and start time of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        started = pid_started(child.pid)
        assert started is not None
    finally:
        child.kill()
        child.wait(10)
    return child.pid, started


async def test_lease_closes_only_answers_whose_owner_holds_no_live_lease(db: AsyncEngine) -> None:
    lease_s = 5.0
    here = host_key()
    assert here is not None, "these tests run on Linux"
    who = customer()
    ids = {
        name: f"test-{name}-{uuid.uuid4().hex[:8]}"
        for name in ("stale_remote", "fresh_remote", "hung_local", "live_local", "reused_pid", "exited_pid")
    }
    parent = os.getppid()
    exited_pid, exited_started = exited_process()
    rows = {  # (host_key, pid, pid_started, heartbeat age)
        "stale_remote": (OTHER_HOST, 4242, "77", STALE_S),
        "fresh_remote": (OTHER_HOST, 4242, "78", 0.0),
        "hung_local": (here, parent, pid_started(parent), STALE_S),  # runs, but stopped renewing
        "live_local": (here, parent, pid_started(parent), 0.0),
        "reused_pid": (here, os.getpid(), "1", 0.0),  # the pid now runs another program
        "exited_pid": (here, exited_pid, exited_started, 0.0),  # killed, and not yet past its lease
    }
    store = Store(db, new_process_id())
    lease = Lease(store, lease_s, checkpoint_interval_s=0.5)  # legacy window: max(5, 3 x 0.5) = 5 s

    texts: dict[str, str] = {}

    async def turn(name: str, owner: str | None, text: str = "") -> TurnRecord:
        start = StartTurn(who, None, f"question of {name}", "demo", "demo", f"{who}-{name}", owner_id=owner)
        record: TurnRecord = await store.run(start, "seed")
        texts[name] = text
        if text:
            await store.checkpoint(record.ai_message_id, text, None, seq=7)
        return record

    async def state() -> dict[str, StoredMessage]:
        return {rid.removeprefix(f"{who}-"): m for rid, m in (await answers(db, who)).items()}

    try:
        for name, (key, pid, started, age) in rows.items():
            await store.run(register(ids[name], key, pid, started, age), "seed")
        for name in rows:
            await turn(name, ids[name], text=f"partial of {name}")
        await turn("unregistered", f"test-never-registered-{uuid.uuid4().hex[:8]}", text="partial")
        await turn("mine", store.owner_id, text="my own partial")
        recent = await turn("legacy_recent", None, text="legacy partial")
        old = await turn("legacy_old", None, text="old legacy partial")
        await store.run(legacy(recent.ai_message_id, 1.0), "seed")
        await store.run(legacy(old.ai_message_id, STALE_S), "seed")
        done = await turn("finished_by_the_dead", ids["stale_remote"])
        ok = await store.finish_turn(
            session_id=done.session_id,
            ai_message_id=done.ai_message_id,
            content="all of it",
            reasoning=None,
            status="completed",
            usage=None,
            error_code=None,
        )
        assert ok

        closed = await lease.tick()

        after = await state()
        expected = {"stale_remote", "hung_local", "reused_pid", "exited_pid", "unregistered", "legacy_old"}
        interrupted = {n for n, m in after.items() if (m.status, m.error_code) == ("error", "interrupted")}
        assert interrupted == expected
        streaming = {n for n, m in after.items() if m.status == "streaming"}
        assert streaming == {"fresh_remote", "live_local", "mine", "legacy_recent"}
        # On PostgreSQL the run's database is shared: answers other tests left may be closed too.
        assert closed >= len(expected) and lease.closed == closed
        for name in expected:
            assert after[name].content == texts[name], f"{name}: the checkpoint's content is not kept"
            assert after[name].stream_seq == 7, f"{name}: the checkpoint's seq is not kept"
        finished = after["finished_by_the_dead"]
        assert (finished.status, finished.content) == ("completed", "all of it"), "a finished answer changed"
        questions = [m for m in await messages(db, who) if m.role == "user"]
        assert len(questions) == len(after) and all(m.status == "completed" for m in questions)

        known = await processes(db)
        me = known.get(lease.me.id)
        assert me is not None, "the ticking process has no lease row"
        assert (me.pid, me.host_key, me.pid_started) == (os.getpid(), here, pid_started(os.getpid()))
        assert abs(me.heartbeat_at - time.time()) < 5
        gone = {n for n in ids if ids[n] not in known}
        assert gone == {"stale_remote", "hung_local", "reused_pid", "exited_pid"}, "dead rows stay"

        # Not written for longer than the legacy window: now it is orphaned. A remote lease running out
        # (no renewal for longer than the lease) orphans that process's answer.
        await store.run(legacy(recent.ai_message_id, STALE_S), "age")
        await store.run(beat(ids["fresh_remote"], lease_s + 1), "age")
        assert await lease.tick() >= 2
        after = await state()
        streaming = {n for n, m in after.items() if m.status == "streaming"}
        assert streaming == {"live_local", "mine"}
        assert (after["legacy_recent"].status, after["legacy_recent"].error_code) == ("error", "interrupted")
        assert (after["fresh_remote"].status, after["fresh_remote"].error_code) == ("error", "interrupted")
        assert after["legacy_recent"].content == "legacy partial"
        renewed = (await processes(db))[lease.me.id]
        assert renewed.heartbeat_at >= me.heartbeat_at

        await lease.stop()
        assert lease.me.id not in await processes(db), "stop() left the lease row"
    finally:
        await store.run(forget(who, [*ids.values(), lease.me.id]), "clean up")
        await store.close()
