"""The edges of scale-out (parley/cluster/, issue 13): nginx in front of two processes, as docs/deploy.md
ships it; Redis restarted in the middle of a turn; how few Redis calls a turn costs; ``parley serve
--workers``; and the layout of a turn's keys.

Real processes (tests/cluster_helpers.py), real sockets, the machine's PostgreSQL, Redis and nginx.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from parley.cluster import PROCS, log_key, meta_key, turn_tag
from parley.cluster.mirrors import FLUSH_S
from tests.cluster_helpers import (
    NGINX_CONF,
    Cluster,
    Nginx,
    RedisServer,
    cluster,
    nginx,
    private_cluster,
    private_redis,
    redis_url,
)
from tests.invariants import Frame, check_turn
from tests.resume_helpers import next_error, resume_frame, text_of, until_seq
from tests.test_cli import SECRET, ServeProcess, cli_env, run_cli
from tests.test_cluster import SLOW, TEXT, customer, follow, seqs, stored
from tests.test_recovery import poll
from tests.wsclient import ChatClient

__all__ = ["cluster", "nginx", "private_cluster", "private_redis", "redis_url"]  # fixtures, used by name

CHAT = "/chat/ws"
HEALTH_TIMEOUT_S = 5.0
QUICK = {**SLOW, "delay_ms": 2}  # the same 400 deltas in about a second
DENSE = {**SLOW, "delay_ms": 1}  # in about half a second: 20 deltas a flush
STEADY_DELAY_MS = 10
STEADY = {**SLOW, "delay_ms": STEADY_DELAY_MS}  # in about 4 s


def bearer(cluster: Cluster, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.token(who)}"}


async def healthz(http_url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=http_url, timeout=5) as http:
        response = await http.get("/healthz")
    return response.status_code, response.json()


def session_of(frames: list[Frame]) -> str:
    return str(next(f["session_id"] for f in frames if "session_id" in f))


# -- nginx in front of two processes -----------------------------------------------------------------


async def test_through_nginx_a_turn_is_resumed_read_and_cancelled_on_the_other_process(
    cluster: Cluster, nginx: Nginx
) -> None:
    a, b = await cluster.spawn_many("a", "b")
    await nginx.start([a.port, b.port])
    who = customer()
    starter = await cluster.client(nginx.ws_url, who)
    follower = await cluster.client(nginx.ws_url, who)  # round-robin: the other process
    rid = await starter.chat("Count", options=SLOW)
    await until_seq(starter, rid, 30)
    await follow_until(follower, rid, after_seq=20, seq=40)

    async with httpx.AsyncClient(base_url=nginx.http_url, headers=bearer(cluster, who), timeout=10) as http:
        # Prometheus scrapes each process's own port; through the balancer it would reach a random one
        assert (await http.get("/metrics")).status_code == 404
        assert (await http.get(f"{a.http_url}/metrics")).status_code == 200
        session_id = session_of(starter.turns[rid])
        live = (await http.get(f"/api/v1/sessions/{session_id}")).json()["messages"][-1]
        assert live["status"] == "streaming", live
        assert live["content"] and live["content"] == TEXT[: len(live["content"])]
        response = await http.post(f"/api/v1/turns/{rid}/cancel")
        assert response.status_code == 202, response.text
        mine = await starter.events(rid)
        from_b = await follower.events(rid)
        answer = (await http.get(f"/api/v1/sessions/{session_id}")).json()["messages"][-1]

    summary = check_turn(mine)
    assert summary.status == "cancelled"
    assert seqs(from_b) == list(range(21, len(mine))), "every event after 20, once, in order"
    assert from_b == mine[21:]
    assert (answer["status"], answer["content"]) == ("cancelled", text_of(mine))
    assert text_of(mine) == TEXT[: len(text_of(mine))]
    await starter.close()
    await follower.close()
    sockets = await poll(
        lambda: asyncio.to_thread(nginx.upstreams, CHAT),
        lambda s: len(s) == 2,
        10,
        "both chat sockets logged by nginx",
    )
    assert sorted(sockets) == sorted([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]), sockets


def test_the_config_docs_deploy_md_shows_is_the_shipped_one() -> None:
    """Every directive of docs/deploy.md's nginx excerpt is in deploy/nginx.conf, which the test above runs
    (but the upstream's addresses, which are examples)."""
    docs = (NGINX_CONF.parent.parent / "docs" / "deploy.md").read_text()
    (excerpt,) = re.findall(r"```nginx\n(.*?)```", docs, re.DOTALL)
    shipped = {line.split("#")[0].strip() for line in NGINX_CONF.read_text().splitlines()}
    shown = [line.split("#")[0].strip() for line in excerpt.splitlines()]
    directives = [line for line in shown if line and not re.fullmatch(r"server [\d.:]+;", line)]
    assert len(directives) > 20
    assert [line for line in directives if line not in shipped] == []


async def follow_until(client: ChatClient, request_id: str, after_seq: int, seq: int) -> list[Frame]:
    """Resume on ``client`` after ``after_seq`` and read until event ``seq``."""
    await client.send(resume_frame(request_id, after_seq))
    await until_seq(client, request_id, seq)
    return client.turns[request_id]


# -- Redis restarted in the middle of a turn ---------------------------------------------------------


async def two_processes(cluster: Cluster) -> tuple[ServeProcess, ServeProcess, str, ChatClient, ChatClient]:
    """Processes A and B, a new customer, and a connection of theirs to each."""
    a, b = await cluster.spawn_many("a", "b")
    who = customer()
    return a, b, who, await cluster.client(a.ws_url, who), await cluster.client(b.ws_url, who)


async def test_redis_restarted_mid_stream_the_owner_streams_on_and_followers_elsewhere_miss_nothing(
    private_cluster: Cluster, private_redis: RedisServer
) -> None:
    cluster = private_cluster
    a, b, who, starter, follower = await two_processes(cluster)
    rid = await starter.chat("Count", options=STEADY)
    other_starter = await cluster.client(a.ws_url, who)
    unfollowed = await other_starter.chat("Count", options=STEADY)  # a turn of A's that B has no copy of
    await until_seq(starter, rid, 10)  # in Redis by now: a resume on B finds it
    await follow_until(follower, rid, after_seq=-1, seq=20)
    await until_seq(starter, rid, 25)

    stopping = time.monotonic()
    assert await private_redis.stop() == 0
    # What the owner can have sent before Redis was down: what its client has read, and a delta a delay.
    stopped_in = time.monotonic() - stopping
    sent_before = starter.turns[rid][-1]["seq"] + int(stopped_in * 1000 / STEADY_DELAY_MS) + 1
    status, health = await healthz(b.http_url)
    assert (status, health["redis"], health["status"]) == (200, "unreachable", "degraded"), health
    late = await cluster.client(b.ws_url, who)
    await late.send(resume_frame(unfollowed, -1))
    refused = await next_error(late)
    assert (refused["code"], refused["request_id"]) == ("cluster_unavailable", unfollowed), refused
    await follower.send({"type": "cancel", "request_id": rid})  # on B, which follows it: still not B's
    refused = await next_error(follower)
    assert (refused["code"], refused["request_id"]) == ("cluster_unavailable", rid), refused
    async with httpx.AsyncClient(base_url=b.http_url, headers=bearer(cluster, who), timeout=10) as http:
        for turn in (rid, unfollowed):
            response = await http.post(f"/api/v1/turns/{turn}/cancel")
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "cluster_unavailable"
    await until_seq(starter, rid, sent_before + 20, timeout=5)  # its own client: streamed on, unhindered
    assert {f["type"] for f in starter.turns[rid][sent_before:]} == {"text"}
    assert not starter.finished(rid), "the turn must still run when Redis comes back"

    await private_redis.start()  # same port, empty
    await poll(
        lambda: healthz(b.http_url),
        lambda h: h[1].get("redis") == "ok" and h[1]["status"] == "ok",
        HEALTH_TIMEOUT_S,
        "B's /healthz says Redis is back",
    )
    mine = check_turn(await starter.events(rid, timeout=30))
    followed = check_turn(await follower.events(rid, timeout=30))  # seq 0..n, no gap, no duplicate
    assert followed.events == mine.events
    assert (followed.status, followed.text) == ("completed", TEXT)
    retried = check_turn(await follow(late, unfollowed, -1))  # a resume again once Redis is back
    assert retried.events == (await other_starter.events(unfollowed)) and retried.status == "completed"
    answer = await stored(b, cluster, who, str(followed.session_id))
    assert (answer["status"], answer["content"]) == ("completed", TEXT)
    for client in (starter, other_starter, follower, late):
        await client.close()


# -- Redis traffic -----------------------------------------------------------------------------------


async def command_calls(url: str) -> dict[str, int]:
    """Calls of each command since Redis started (``INFO commandstats``), commands run by scripts too."""
    async with Redis.from_url(url) as client:
        stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


async def test_a_turn_costs_redis_a_call_per_flush_never_one_per_delta(
    private_cluster: Cluster, private_redis: RedisServer
) -> None:
    _, _, _, starter, follower = await two_processes(private_cluster)
    before = await command_calls(private_redis.url)
    started = time.monotonic()
    rid = await starter.chat("Count", options=DENSE)
    await until_seq(starter, rid, 5)
    await follower.send(resume_frame(rid, -1))
    followed = check_turn(await follower.events(rid, timeout=30))
    elapsed = time.monotonic() - started
    assert await starter.events(rid) == followed.events  # B read the end from Redis: every append landed
    after = await command_calls(private_redis.url)
    calls = {name: after[name] - before.get(name, 0) for name in after}

    deltas = followed.kinds.count("text")
    assert deltas == 400 and followed.text == TEXT
    entries = calls.get("xadd", 0)  # one per flush of the turn (the append script's XADD)
    # Scripts: the turn's appends, and both processes' heartbeats (a ZADD each) and dead-process checks
    # (a ZRANGEBYSCORE each), which run whatever the turns do.
    appends = calls.get("evalsha", 0) - calls.get("zadd", 0) - calls.get("zrangebyscore", 0)
    reads = calls.get("xread", 0)  # the follower's replica, fed from the stream
    detail = f"{calls} in {elapsed:.2f}s"
    assert entries <= appends <= elapsed / FLUSH_S + 10, f"more appends than flush periods: {detail}"
    assert max(appends, reads) < deltas / 4, f"a Redis round trip per delta or so: {detail}"
    await starter.close()
    await follower.close()


# -- parley serve --workers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("redis", "named"),
    [("", "PARLEY_REDIS_URL"), ("redis://127.0.0.1:6379/0", "a PostgreSQL PARLEY_DATABASE_URL")],
)
def test_workers_without_redis_or_postgresql_refuse_to_start(tmp_path: Path, redis: str, named: str) -> None:
    settings = {"PARLEY_JWT_SECRET": SECRET} | ({"PARLEY_REDIS_URL": redis} if redis else {})
    env = cli_env(tmp_path / "data", **settings)
    result = run_cli(["serve", "--workers", "2"], env, tmp_path, timeout=30)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("parley: "), result.stderr
    assert named in lines[0]
    assert result.stdout == ""


def children(pid: int) -> list[int]:
    """The pids of a live process's children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def state(pid: int) -> str:
    """A process's state letter (``R``, ``S``, ``Z`` a zombie…); ``""`` when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return ""


def exited(pid: int) -> bool:
    """Gone, or a zombie no one has reaped yet (it runs nothing any more)."""
    return state(pid) in ("", "Z", "X")


async def test_serve_with_workers_runs_cluster_members_on_one_port_and_sigterm_stops_them_all(
    cluster: Cluster,
) -> None:
    grace_s = 5.0
    server: ServeProcess = cluster.launch("workers", "--workers", "2", PARLEY_SHUTDOWN_GRACE_S=str(grace_s))
    await server.wait_healthy()
    async with Redis.from_url(cluster.redis_url) as redis:
        members = await poll(
            lambda: redis.zrange(PROCS, 0, -1),
            lambda m: len(m) == 2,
            HEALTH_TIMEOUT_S,
            "both workers registered in Redis",
        )
        workers = [pid for pid in children(server.proc.pid) if "spawn_main" in cmdline(pid)]
        assert len(workers) == 2, [cmdline(pid) for pid in children(server.proc.pid)]
        subprocesses = children(server.proc.pid)  # the workers, and multiprocessing's resource tracker

        who = customer()
        first, second, third = [await cluster.client(server.ws_url, who) for _ in range(3)]
        rids = [await first.chat("One", options=QUICK), await second.chat("Two", options=QUICK)]
        await until_seq(first, rids[0], 30)
        resumed = await follow(third, rids[0], 20)
        turns = [check_turn(await first.events(rids[0])), check_turn(await second.events(rids[1]))]
        assert [(t.status, t.text) for t in turns] == [("completed", TEXT)] * 2
        assert resumed == turns[0].events[21:], "whichever worker the third socket is on"
        for client in (first, second, third):
            await client.close()

        started = time.monotonic()
        assert await cluster.terminate(server, timeout=grace_s + 10) == 0, server.describe()
        assert time.monotonic() - started < grace_s, f"SIGTERM took {time.monotonic() - started:.1f}s"
        await poll(  # reaped by the parent, or (the tracker) exiting on its own as the parent went
            lambda: asyncio.to_thread(lambda: [(p, state(p)) for p in subprocesses if not exited(p)]),
            lambda running: not running,
            HEALTH_TIMEOUT_S,
            "every worker gone",
        )
        assert await redis.zrange(PROCS, 0, -1) == [], f"a worker kept its lease (of {members})"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


# -- keys --------------------------------------------------------------------------------------------

AWKWARD = ["1", "a:b", "a", "{", "}", "}{", "{x}", "a}b{c", "t:1:a", "éè", "客户:42", "🦜{🦜}", "x" * 255]


@pytest.mark.parametrize("customer_id", AWKWARD)
def test_a_turns_keys_share_one_hash_slot_whatever_its_ids_hold(customer_id: str) -> None:
    for request_id in ("r", "b:c", "{}", "}", "{", "ид-{1}", ""):
        log, meta = log_key(customer_id, request_id), meta_key(customer_id, request_id)
        assert log != meta
        assert key_slot(log.encode()) == key_slot(meta.encode()), (customer_id, request_id, log, meta)
        assert turn_tag(customer_id, request_id) in log and turn_tag(customer_id, request_id) in meta


def test_no_two_turns_share_a_key() -> None:
    assert log_key("a:b", "c") != log_key("a", "b:c")
    assert meta_key("a:b", "c") != meta_key("a", "b:c")
    turns = {(c, r) for c in AWKWARD for r in (*AWKWARD, "b:c", "c", "1:a")}
    assert len({log_key(c, r) for c, r in turns}) == len(turns)
    assert len({meta_key(c, r) for c, r in turns}) == len(turns)
    assert not {log_key(c, r) for c, r in turns} & {meta_key(c, r) for c, r in turns}
