"""Turn logs on their own (parley/streams.py): numbering, replay then live, caps, eviction order and TTL."""

from __future__ import annotations

import json

import pytest

from parley.protocol import Kind, TurnEmitter
from parley.streams import Expired, Follower, TurnLog, TurnStreams, ended_log_bytes
from tests.resume_helpers import Outlet


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registry(cap: int = 1 << 20, turn_cap: int = 1 << 20, ttl: float = 60) -> tuple[TurnStreams, Clock]:
    clock = Clock()
    return TurnStreams(ttl_s=ttl, cap_bytes=cap, turn_cap_bytes=turn_cap, clock=clock), clock


def turn(streams: TurnStreams, request_id: str = "r1", deltas: int = 5, end: bool = True) -> TurnLog:
    log = streams.open("c1", request_id)
    events = TurnEmitter(log, request_id)
    events.working("text", "demo", "demo")
    events.set_session("s1")
    for n in range(deltas):
        events.text(f"d{n} ")
    if end:
        events.db_operation("u", "a", "completed", None)
        events.complete_turn("completed")
    return log


def follow(log: TurnLog, after_seq: int, dialect: str = "camel", room: int = 1_000_000) -> Outlet:
    outlet = Outlet(room)
    start = log.start(after_seq, dialect == "snake")
    assert start is not None
    follower = Follower(log, outlet, dialect, start)  # type: ignore[arg-type]
    if follower.catch_up():
        log.attach(follower)
    return outlet


def test_a_replay_then_live_has_every_seq_once_in_order() -> None:
    streams, _ = registry()
    log = turn(streams, deltas=3, end=False)  # seqs 0..3 so far
    outlet = follow(log, 1)
    events = TurnEmitter(log, "r1")
    events.text("live ")
    events.complete_turn("completed")
    frames = outlet.drain()
    assert [f["seq"] for f in frames] == [2, 3, 4, 5]
    assert [f["type"] for f in frames] == ["text", "text", "text", "fullProcessComplete"]
    assert all(f["session_id"] == "s1" for f in frames)


def test_a_turn_started_in_one_dialect_resumes_in_the_other() -> None:
    streams, _ = registry()
    log = turn(streams, deltas=2)  # camel seqs 0..4; snake adds tts_not_requested at 5
    snake = follow(log, -1, "snake").drain()
    assert [f["type"] for f in snake] == [
        "working",
        "text_chunk",
        "text_chunk",
        "db_operation_executed",
        "text_completed",
        "tts_not_requested",
    ]
    assert [f["seq"] for f in snake] == list(range(6))
    assert "session_id" not in snake[0] and all(f["session_id"] == "s1" for f in snake[1:])
    # A snake client that saw text_completed gets only the last frame; one that saw everything, nothing.
    assert [f["type"] for f in follow(log, 4, "snake").drain()] == ["tts_not_requested"]
    assert follow(log, 5, "snake").drain() == []
    assert follow(log, 4, "camel").drain() == []
    assert log.start(5, snake=False) is None  # beyond the end in camel
    assert log.start(6, snake=True) is None


def test_a_backed_up_socket_pauses_the_replay_without_losing_an_event() -> None:
    streams, _ = registry()
    log = turn(streams, deltas=50, end=False)
    outlet = Outlet(room=10)
    follower = Follower(log, outlet, "camel", (0, False))  # type: ignore[arg-type]
    seen: list[int] = []
    while not follower.catch_up():
        seen += [f["seq"] for f in outlet.drain()]
    seen += [f["seq"] for f in outlet.drain()]
    log.attach(follower)
    TurnEmitter(log, "r1").complete_turn("completed")
    seen += [f["seq"] for f in outlet.drain()]
    assert seen == list(range(52))  # working, 50 deltas, the end


async def test_the_turn_waits_only_for_a_live_follower_that_is_backed_up() -> None:
    streams, _ = registry()
    log = turn(streams, deltas=1, end=False)
    outlet = follow(log, -1, room=100)
    replaying = Outlet(room=0)  # a follower still replaying: the turn never waits for it
    Follower(log, replaying, "camel", (0, False)).catch_up()  # type: ignore[arg-type]
    TurnEmitter(log, "r1").text("more ")
    assert not log.congested
    outlet.room = 0
    TurnEmitter(log, "r1").text("and more ")
    assert log.congested
    outlet.room = 100
    await log.wait_ready()
    assert not log.congested


def test_one_turn_keeps_at_most_its_cap_and_its_newest_event() -> None:
    streams, _ = registry(turn_cap=4096)
    log = turn(streams, deltas=200)
    assert log.bytes <= 4096 and log.first_seq > 0
    assert streams.total == log.bytes
    with pytest.raises(Expired):
        log.event(0)
    kind, body, _ = log.event(log.next_seq - 1)
    assert kind == Kind.COMPLETE and "completed" in body
    tail = follow(log, log.first_seq - 1).drain()
    assert [f["seq"] for f in tail] == list(range(log.first_seq, log.next_seq))


def test_a_resume_of_evicted_events_is_expired() -> None:
    streams, _ = registry(turn_cap=4096)
    log = turn(streams, deltas=200)
    start = log.start(-1, snake=False)
    assert start is not None
    with pytest.raises(Expired):
        Follower(log, Outlet(), "camel", start).catch_up()  # type: ignore[arg-type]


def test_over_the_server_cap_ended_turns_go_first_oldest_first() -> None:
    streams, _ = registry(cap=64 * 1024)
    ended = [turn(streams, f"e{n}", deltas=600) for n in range(6)]  # about 15 KiB each
    running = turn(streams, "live", deltas=600, end=False)
    assert streams.total <= 64 * 1024
    survivors = [log.request_id for log in ended if streams.find("c1", log.request_id) is not None]
    kept = len(survivors)
    assert 0 < kept < 6 and survivors == [f"e{n}" for n in range(6 - kept, 6)]  # the newest survive
    assert streams.find("c1", "live") is running and running.first_seq == 0


def test_over_the_server_cap_with_only_running_turns_their_oldest_events_go() -> None:
    streams, _ = registry(cap=64 * 1024)
    logs = [turn(streams, f"r{n}", deltas=1000, end=False) for n in range(6)]
    assert streams.total <= 64 * 1024
    assert all(streams.find("c1", log.request_id) is log for log in logs)
    assert any(log.first_seq > 0 for log in logs)
    assert sum(log.bytes for log in logs) == streams.total


def test_an_ended_turn_is_kept_for_the_ttl_then_forgotten() -> None:
    streams, clock = registry(ttl=600)
    log = turn(streams)
    clock.now += 599
    assert streams.find("c1", "r1") is log
    clock.now += 1
    assert streams.find("c1", "r1") is None
    assert streams.total == 0 and len(streams) == 0


def test_the_expiry_sweep_frees_memory_on_an_idle_server() -> None:
    streams, clock = registry(ttl=10)
    for n in range(3):
        turn(streams, f"r{n}")
    assert streams.total > 0
    clock.now += 10
    streams.expire()
    assert streams.total == 0 and len(streams) == 0


def test_a_running_turn_never_expires_and_a_later_turn_with_the_same_id_takes_its_place() -> None:
    streams, clock = registry(ttl=1)
    first = turn(streams, "same", end=False)
    clock.now += 100
    assert streams.find("c1", "same") is first
    second = turn(streams, "same")
    assert streams.find("c1", "same") is second
    assert streams.find("other-customer", "same") is None


@pytest.mark.parametrize("deltas", [3, 61, 62, 200])
def test_an_ended_turns_memory_is_counted_exactly(deltas: int) -> None:
    streams, _ = registry()
    log = turn(streams, deltas=deltas)
    bodies = [log.event(seq)[1] for seq in range(log.next_seq)]
    assert log.bytes == streams.total == ended_log_bytes(bodies)


def test_every_event_reads_back_as_logged_across_chunks() -> None:
    streams, _ = registry()
    log = turn(streams, deltas=300, end=False)  # sealed chunks and an open one
    texts = [log.event(seq)[1] for seq in range(1, 301)]
    assert texts == [f'"content":"d{n} "' for n in range(300)]
    assert log.event(0)[2] is None and log.event(1)[2] == "s1"  # session from seq 1 on


def test_big_events_seal_their_chunk_early_and_read_back() -> None:
    streams, _ = registry()
    log = streams.open("c1", "big")
    events = TurnEmitter(log, "big")
    pieces = [f"{n:05d}" + "x" * 6000 for n in range(10)]
    for piece in pieces:
        events.text(piece)
    assert log.bytes > 0  # sealed (and counted) before CHUNK events
    assert [json.loads("{" + log.event(seq)[1] + "}")["content"] for seq in range(10)] == pieces


@pytest.mark.parametrize("start", [0, 1, 63, 64, 65, 130, 200, 301])
def test_the_events_from_any_seq_on_read_back_in_one_piece_for_redis(start: int) -> None:
    streams, _ = registry()
    log = turn(streams, deltas=300, end=False)  # sealed chunks of 64 and an open one
    kinds, bodies = log.bodies(start)
    assert bodies == [log.event(seq)[1] for seq in range(start, log.next_seq)]
    assert list(kinds) == [log.event(seq)[0] for seq in range(start, log.next_seq)]


def test_events_no_longer_kept_are_not_read_for_redis() -> None:
    streams, _ = registry(turn_cap=4096)
    log = turn(streams, deltas=200)
    with pytest.raises(Expired):
        log.bodies(0)
    assert len(log.bodies(log.first_seq)[1]) == log.next_seq - log.first_seq


def test_a_replica_starts_where_its_stream_does_and_is_not_a_running_turn_here() -> None:
    streams, _ = registry()
    replica = streams.open_replica("c1", "r9", 40)
    assert streams.find("c1", "r9") is replica and streams.running("c1") == 0
    assert replica.start(39, snake=False) == (40, False)
    for n in range(100):
        replica.append(Kind.TEXT, f'"content":"{n}"')
    assert replica.event(40)[1] == '"content":"0"' and replica.next_seq == 140
    with pytest.raises(Expired):
        replica.event(39)
    outlet = follow(replica, 100)
    replica.lose('{"type":"error","code":"stream_expired"}')
    assert outlet.drain()[-1]["code"] == "stream_expired"
    assert streams.find("c1", "r9") is None
