"""PROTOCOL section 5: resume a turn from another connection after a drop, in either dialect, from two tabs,
after the end; unknown, foreign, expired and evicted turns; bad resume frames."""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path

import pytest

from tests.conftest import LiveServer, live_server, make_settings
from tests.invariants import Frame, check_turn
from tests.resume_helpers import (
    SLOW,
    TEXT,
    as_camel,
    drop,
    next_error,
    nothing_else,
    resume_frame,
    resumed,
    stored_answer,
    text_of,
    until_seq,
)

LONG_TEXT = "".join(f"{n:04d} " for n in range(1500))  # 1,500 deltas

# (dialect, how the connection is lost) for each leg of a turn: the first sends it, the others resume it.
PLANS = [
    [("camel", "close"), ("snake", "abort"), ("camel", "abort"), ("snake", "close"), ("camel", "")],
    [("snake", "abort"), ("camel", "close"), ("snake", "abort"), ("snake", "")],
    [("camel", "abort"), ("camel", "abort"), ("camel", "close"), ("camel", "")],
]


async def interrupted_turn(
    server: LiveServer, plan: list[tuple[str, str]], seed: int
) -> tuple[str, list[Frame]]:
    """Run one turn, dropping its connection at random seqs and resuming it on a new one each time; return
    its session id and every frame the client saw, in camel names."""
    rng, customer, request_id = random.Random(seed), f"resume-{seed}", f"r-{uuid.uuid4().hex}"
    seen: list[Frame] = []
    for leg, (dialect, how) in enumerate(plan):
        client = await server.client(customer, dialect)
        if leg == 0:
            await client.chat("Count", request_id=request_id, options=SLOW)
        else:
            await client.send(resume_frame(request_id, seen[-1]["seq"]))
        if not how:  # the last leg reads to the end
            seen += as_camel(await client.events(request_id), dialect)
            await client.close()
            break
        await until_seq(client, request_id, (seen[-1]["seq"] if seen else 0) + rng.randint(1, 60))
        seen += as_camel(client.turns[request_id], dialect)
        await drop(client, how)
    summary = check_turn(seen)  # seqs 0..n, once each, and every invariant of a turn
    assert summary.session_id is not None
    return summary.session_id, seen


async def test_dropped_and_resumed_turns_equal_an_uninterrupted_one(server: LiveServer) -> None:
    async with await server.client("resume-whole") as client:
        whole = check_turn(await client.events(await client.chat("Count", options=SLOW)))
    runs = await asyncio.gather(*(interrupted_turn(server, plan, n) for n, plan in enumerate(PLANS)))
    for n, (session_id, seen) in enumerate(runs):
        assert [f["type"] for f in seen] == whole.kinds
        assert text_of(seen) == whole.text == TEXT
        stored = await stored_answer(server, f"resume-{n}", session_id)
        assert stored["status"] == "completed" and stored["content"] == TEXT


async def test_resume_mid_turn_replays_what_was_missed_then_follows_live(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as first:
        rid = await first.chat("Count", options=SLOW)
        await until_seq(first, rid, 20)
        async with await sqlite_server.client(dialect="snake") as second:
            await second.send(resume_frame(rid, 10))
            replayed = await second.pump()
            log = sqlite_server.runtime.streams.find("1", rid)
            assert log is not None and not log.ended, "the resume was meant to come mid-turn"
            tail = await second.events(rid)
        head = await first.events(rid)
    assert replayed["seq"] == 11
    assert [f["seq"] for f in tail] == list(range(11, len(head) + 1))  # snake: one more closing frame
    assert as_camel(tail, "snake") == head[11:]


async def test_two_tabs_follow_one_turn(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as sender:
        rid = await sender.chat("Count", options=SLOW)
        await sender.wait_for(rid, "text")
        async with await sqlite_server.client() as tab1, await sqlite_server.client("1", "snake") as tab2:
            one, two = await asyncio.gather(resumed(tab1, rid, -1), resumed(tab2, rid, -1))
        own = await sender.events(rid)
    assert one == own
    assert check_turn(one).text == check_turn(two, "snake").text == TEXT


async def test_resume_after_the_end_replays_the_whole_turn(server: LiveServer) -> None:
    async with await server.client() as client:
        rid = await client.chat("Count", options={"text": TEXT, "chunks": 300})
        own = await client.events(rid)
    async with await server.client(dialect="snake") as again:
        replay = await resumed(again, rid, -1)
        assert as_camel(replay, "snake") == own
        assert [f["type"] for f in await resumed(again, rid, len(own) - 2)] == [
            "text_completed",
            "tts_not_requested",
        ]
        await nothing_else(again)


async def test_resume_of_a_turn_waiting_in_a_queue_gets_all_of_it(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        running = await client.chat("First", options={"chunks": 50, "delay_ms": 10})
        queued = await client.chat("Second", options={"chunks": 5})
        async with await sqlite_server.client() as other:
            await other.send(resume_frame(queued, -1))
            await nothing_else(other)  # not started: nothing to replay yet
            waited = await other.events(queued)
        assert check_turn(waited).status == "completed"
        assert waited == await client.events(queued)
        await client.events(running)


async def test_unknown_foreign_and_malformed_ids_get_the_same_answer(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client(1) as owner:
        rid = await owner.chat("Mine", options={"chunks": 3})
        await owner.events(rid)
    async with await sqlite_server.client(2) as stranger:
        await stranger.send(resume_frame(rid, -1))
        foreign = await next_error(stranger)
        made_up = "x" * 32
        await stranger.send(resume_frame(made_up, 5))
        unknown = await next_error(stranger)
        await nothing_else(stranger)
    assert foreign == {**unknown, "request_id": rid}
    assert foreign["code"] == "stream_expired" and foreign["stage"] == "validation"
    assert "seq" not in foreign


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "resume", "after_seq": 3},
        {"type": "resume", "request_id": "", "after_seq": 3},
        {"type": "resume", "request_id": 7, "after_seq": 3},
        {"type": "resume", "request_id": "r", "after_seq": "3"},
        {"type": "resume", "request_id": "r", "after_seq": -2},
        {"type": "resume", "request_id": "r", "after_seq": 1.5},
        {"type": "resume", "request_id": "r" * 256, "after_seq": 1},
    ],
)
async def test_a_bad_resume_frame_is_invalid_request(sqlite_server: LiveServer, frame: Frame) -> None:
    async with await sqlite_server.client() as client:
        await client.send(frame)
        error = await next_error(client)
        await nothing_else(client)
    assert error["code"] == "invalid_request" and "resume" in error["content"]


async def test_after_seq_beyond_the_turn_is_invalid_request(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        rid = await client.chat("Short", options={"chunks": 2})
        events = await client.events(rid)
        await client.send(resume_frame(rid, len(events)))
        error = await next_error(client)
        await client.send(resume_frame(rid, len(events) - 1))  # saw everything: nothing to send
        await nothing_else(client)
    assert error["code"] == "invalid_request" and error["request_id"] == rid
    assert "beyond" in error["content"]


async def test_after_the_ttl_a_turn_is_expired(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path, resume_ttl_s=30)) as server:
        streams = server.runtime.streams
        now = streams.clock()
        streams.clock = lambda: now  # the server's own clock, held; then moved past the TTL
        async with await server.client() as client:
            rid = await client.chat("Keep me", options={"chunks": 3})
            await client.events(rid)
            assert (await resumed(client, rid, 0))[0]["seq"] == 1
            streams.clock = lambda: now + 30
            await client.send(resume_frame(rid, 0))
            error = await next_error(client)
    assert error["code"] == "stream_expired" and error["request_id"] == rid
    assert streams.total == 0


async def test_evicted_events_are_expired_and_the_kept_tail_resumes(tmp_path: Path) -> None:
    async with (
        live_server(make_settings(tmp_path, resume_turn_bytes=8 * 1024)) as server,
        await server.client() as client,
    ):
        rid = await client.chat("Long", options={"text": LONG_TEXT, "chunks": 1500})  # about 32 KiB kept
        own = await client.events(rid)
        await client.send(resume_frame(rid, -1))
        error = await next_error(client)
        assert error["code"] == "stream_expired" and error["request_id"] == rid
        tail = await resumed(client, rid, len(own) - 20)
    assert tail == own[-19:]


async def test_the_oldest_ended_turns_go_first_when_all_logs_are_full(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, resume_buffer_bytes=64 * 1024)
    async with live_server(settings) as server, await server.client() as client:
        rids = []
        for _ in range(6):  # about 32 KiB of log each
            rids.append(await client.chat("Fill", options={"text": LONG_TEXT, "chunks": 1500}))
            await client.events(rids[-1])
        await client.send(resume_frame(rids[0], -1))
        assert (await next_error(client))["code"] == "stream_expired"
        newest = await resumed(client, rids[-1], -1)
    assert check_turn(newest).text == LONG_TEXT
    assert server.runtime.streams.total <= 64 * 1024


async def test_a_resume_that_needs_more_than_the_send_buffer_is_paced(tmp_path: Path) -> None:
    """A replay bigger than the client's send buffer is not a slow client: it goes out as the socket
    drains, and nothing is lost."""
    big = "".join(f"{n:07d} " for n in range(40_000))  # 320 KB of text in 40,000 deltas
    settings = make_settings(tmp_path, send_buffer_bytes=256 * 1024)
    async with live_server(settings) as server, await server.client() as client:
        rid = await client.chat("Big", options={"text": big, "chunks": 40_000})
        own = await client.events(rid, timeout=60)
        async with await server.client() as again:
            replay = await resumed(again, rid, -1, timeout=60)
    assert replay == own and check_turn(replay).text == big
