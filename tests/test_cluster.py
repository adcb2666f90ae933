"""Several ``parley serve`` processes on one PostgreSQL database and one Redis are one server (issue 13):
a turn runs on one process and is resumed, followed, read and cancelled from the others; a process that is
killed, hung or stopped has its turns ended for the clients following them elsewhere.

Real processes (tests/cluster_helpers.py), real sockets, the machine's PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
from sqlalchemy import text

from tests.cluster_helpers import Cluster, cluster, redis_url
from tests.invariants import Frame, check_turn, kind_of
from tests.metrics_helpers import scrape
from tests.resume_helpers import as_camel, resume_frame, text_of, until_seq
from tests.test_cli import ServeProcess
from tests.wsclient import ChatClient

__all__ = ["cluster", "redis_url"]  # fixtures, used by name

# 400 deltas of 5 characters, every one saying where it belongs; about 8 s at 20 ms each.
TEXT = "".join(f"{n:04d} " for n in range(400))
SLOW = {"text": TEXT, "chunks": 400, "delay_ms": 20}


def customer() -> str:
    return f"cluster-{uuid.uuid4().hex[:10]}"


def seqs(frames: list[Frame]) -> list[int]:
    return [f["seq"] for f in frames]


async def follow(client: ChatClient, request_id: str, after_seq: int, timeout: float = 30) -> list[Frame]:
    """Resume on ``client`` and read the turn to its end."""
    await client.send(resume_frame(request_id, after_seq))
    return await client.events(request_id, timeout)


def rest(server: ServeProcess, cluster: Cluster, who: str) -> httpx.AsyncClient:
    """REST on ``server`` as ``who``."""
    headers = {"Authorization": f"Bearer {cluster.token(who)}"}
    return httpx.AsyncClient(base_url=server.http_url, headers=headers, timeout=10)


async def streaming(
    cluster: Cluster, server: ServeProcess, who: str, seq: int
) -> tuple[ChatClient, str, str]:
    """A slow turn started on ``server`` and read up to ``seq``: its client, request_id and session id."""
    starter = await cluster.client(server.ws_url, who)
    rid = await starter.chat("Count", options=SLOW)
    await until_seq(starter, rid, seq)
    session_id = next(f["session_id"] for f in starter.turns[rid] if "session_id" in f)
    return starter, rid, session_id


async def stored(server: ServeProcess, cluster: Cluster, who: str, session_id: str) -> dict[str, Any]:
    async with rest(server, cluster, who) as http:
        response = await http.get(f"/api/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()["messages"][-1]
    return answer


async def test_a_turn_on_one_process_is_resumed_on_two_others_and_cancelled_from_one(
    cluster: Cluster,
) -> None:
    a, b, c = await cluster.spawn_many("a", "b", "c")
    who = customer()
    starter = await cluster.client(a.ws_url, who)
    on_b = await cluster.client(b.ws_url, who)
    on_c = await ChatClient.open(c.ws_url, cluster.token(who), dialect="snake")
    rid = await starter.chat("Count", options=SLOW)
    await until_seq(starter, rid, 30)

    stranger = await cluster.client(b.ws_url, customer())
    await stranger.send(resume_frame(rid, -1))  # another customer's turn is one that does not exist
    refused = await stranger.next_other()
    assert (refused["code"], refused["request_id"]) == ("stream_expired", rid)
    await stranger.close()
    await on_b.send(resume_frame(rid, 10))  # from the middle, camel
    await on_c.send(resume_frame(rid, -1))  # from the start, snake
    await until_seq(on_b, rid, 60)
    await until_seq(on_c, rid, 60)
    started = time.monotonic()
    await on_b.send({"type": "cancel", "request_id": rid})
    cancelled = await starter.wait_for(rid, "cancelled")
    assert time.monotonic() - started < 2, "a cross-process cancel is a matter of milliseconds"

    mine = await starter.events(rid)
    from_b = await on_b.events(rid)
    from_c = as_camel(await on_c.events(rid), "snake")
    summary = check_turn(mine)
    assert summary.status == "cancelled"
    # B: every event after seq 10, once, in order; C: every event from 0, the same as the starter's.
    assert seqs(from_b) == list(range(11, summary.events[-1]["seq"] + 1))
    assert from_b == mine[11:]
    assert [{k: v for k, v in f.items() if k != "type"} for f in from_c] == [
        {k: v for k, v in f.items() if k != "type"} for f in mine
    ]
    assert [f["type"] for f in from_c] == [f["type"] for f in mine]
    assert cancelled in from_b
    answer = await stored(c, cluster, who, str(summary.session_id))
    assert answer["status"] == "cancelled"
    assert answer["content"] == text_of(mine) == TEXT[: len(answer["content"])]
    for client in (starter, on_b, on_c):
        await client.close()


async def test_a_client_that_moves_to_another_process_every_few_events_misses_nothing(
    cluster: Cluster,
) -> None:
    servers = await cluster.spawn_many("a", "b", "c")
    who = customer()
    client = await cluster.client(servers[0].ws_url, who)
    rid = await client.chat("Count", options={**SLOW, "delay_ms": 5})
    seen: list[Frame] = []
    hops = 0
    while True:
        async with asyncio.timeout(30):
            while len(client.turns[rid]) < 7 and not client.finished(rid):
                await client.pump()
                assert not client.other, (hops, client.other)
        seen += client.turns.pop(rid)
        if kind_of(seen[-1]) == "fullProcessComplete":
            break
        await client.close()
        hops += 1
        client = await cluster.client(servers[hops % 3].ws_url, who)
        await client.send(resume_frame(rid, seen[-1]["seq"]))
    await client.close()
    summary = check_turn(seen)  # seq 0, 1, 2… with no duplicate and no gap, whatever process sent them
    assert hops > 20
    assert summary.text == TEXT
    answer = await stored(servers[1], cluster, who, str(summary.session_id))
    assert (answer["status"], answer["content"]) == ("completed", TEXT)


async def test_rest_on_another_process_shows_the_live_partial_and_cancels_the_turn(cluster: Cluster) -> None:
    a, b = await cluster.spawn_many("a", "b")
    who = customer()
    starter, rid, session_id = await streaming(cluster, a, who, 40)
    async with rest(b, cluster, who) as http:
        live = (await http.get(f"/api/v1/sessions/{session_id}")).json()["messages"][-1]
        assert live["status"] == "streaming"
        assert live["seq"] >= 30, "what the owner had sent a flush ago, not the last checkpoint"
        assert live["content"] == TEXT[: len(live["content"])] and live["content"]
        other = {"Authorization": f"Bearer {cluster.token(customer())}"}
        assert (await http.post(f"/api/v1/turns/{rid}/cancel", headers=other)).status_code == 404
        response = await http.post(f"/api/v1/turns/{rid}/cancel")
        assert response.status_code == 202, response.text
        summary = check_turn(await starter.events(rid))
        assert summary.status == "cancelled"
        assert (await http.post(f"/api/v1/turns/{rid}/cancel")).status_code == 404  # ended
        assert (await http.post("/api/v1/turns/no-such-turn/cancel")).status_code == 404
    await starter.close()


async def test_kill_9_of_the_owner_ends_its_turns_for_followers_elsewhere_with_all_that_was_streamed(
    cluster: Cluster,
) -> None:
    a, b = await cluster.spawn_many("a", "b")
    who = customer()
    starters = [await cluster.client(a.ws_url, who) for _ in range(3)]
    rids = [await s.chat("Count", options=SLOW) for s in starters]
    followers = []
    for rid in rids:
        follower = await cluster.client(b.ws_url, who)
        await follower.send(resume_frame(rid, -1))
        await until_seq(follower, rid, 20)
        followers.append(follower)
    cluster.kill(a)
    for rid, follower in zip(rids, followers, strict=True):
        summary = check_turn(await follower.events(rid, timeout=20))
        assert summary.status == "error"
        assert summary.only("error")["code"] == "interrupted"
        answer = await stored(b, cluster, who, str(summary.session_id))
        assert (answer["status"], answer["error_code"]) == ("error", "interrupted")
        assert answer["content"] == summary.text, "stored text = streamed text, not the last checkpoint"
        assert len(summary.text) > 0
        await follower.close()
    # B closed them (from their logs, as it followed them): counted there, as ended turns A never counted
    now = await scrape(b.http_url)
    assert now.get("parley_turns_interrupted_total") == 3
    assert now.get("parley_resumes_total", outcome="replayed") == 3


async def test_a_hung_owner_loses_its_turns_within_the_lease_and_cannot_write_after(cluster: Cluster) -> None:
    lease_s = 3.0
    a, b = await cluster.spawn_many("a", "b", PARLEY_OWNER_LEASE_S=str(lease_s))
    who = customer()
    starter = await cluster.client(a.ws_url, who)
    rid = await starter.chat("Count", options={**SLOW, "delay_ms": 10})
    follower = await cluster.client(b.ws_url, who)
    await follower.send(resume_frame(rid, -1))
    await until_seq(follower, rid, 20)
    cluster.stop(a)  # SIGSTOP: its sockets stay open, it renews nothing
    stopped = time.monotonic()
    try:
        summary = check_turn(await follower.events(rid, timeout=lease_s * 4))
        closed_after = time.monotonic() - stopped
    finally:
        cluster.cont(a)
    assert closed_after < lease_s + 1.5, (
        f"closed {closed_after:.1f}s after the owner hung; the lease is {lease_s}s"
    )
    assert summary.only("error")["code"] == "interrupted"
    answer = await stored(b, cluster, who, str(summary.session_id))
    assert (answer["status"], answer["content"]) == ("error", summary.text)

    # The owner wakes up and streams on: nothing it does reaches the closed turn, in Redis or the database.
    # Its end comes after its final write (refused: the answer is no longer streaming), so nothing follows.
    mine = check_turn(await starter.events(rid, timeout=30))
    assert mine.only("error")["code"] == "interrupted"
    async with cluster.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT status, content FROM chat_messages WHERE request_id = :rid AND role = 'assistant'"
                ),
                {"rid": rid},
            )
        ).one()
    assert (row.status, row.content) == ("error", summary.text)
    late = await cluster.client(b.ws_url, who)
    replay = await follow(late, rid, -1)
    assert replay == summary.events, "the log is the one the recovering process closed, nothing appended"
    for client in (starter, follower, late):
        await client.close()


async def test_sigterm_drains_the_owner_and_followers_elsewhere_see_the_end(cluster: Cluster) -> None:
    a, b = await cluster.spawn_many("a", "b")
    who = customer()
    starter = await cluster.client(a.ws_url, who)
    rid = await starter.chat("Count", options={**SLOW, "delay_ms": 5})
    follower = await cluster.client(b.ws_url, who)
    await follower.send(resume_frame(rid, -1))
    await until_seq(follower, rid, 20)
    exit_code = asyncio.create_task(cluster.terminate(a))
    summary = check_turn(await follower.events(rid, timeout=30))
    assert (summary.status, summary.text) == ("completed", TEXT)  # drained: the turn finished
    assert check_turn(await starter.events(rid)).events == summary.events  # its own client got it all too
    assert await exit_code == 0
    await follower.close()
    await starter.close()


async def test_deleting_the_session_on_another_process_stops_the_turn_writing_it(cluster: Cluster) -> None:
    a, b = await cluster.spawn_many("a", "b")
    who = customer()
    starter, rid, session_id = await streaming(cluster, a, who, 10)
    async with rest(b, cluster, who) as http:
        assert (await http.delete(f"/api/v1/sessions/{session_id}")).status_code == 204
    cancelled = await starter.wait_for(rid, "cancelled", timeout=5)
    assert cancelled["code"] == "session_deleted"
    assert kind_of((await starter.events(rid))[-1]) == "fullProcessComplete"
    await starter.close()
