"""The cluster harness itself (tests/cluster_helpers.py): ``parley serve`` processes on one database and one
Redis, nginx round-robin in front of them from the shipped ``deploy/nginx.conf``, and a Redis of the test's
own that stops and starts. These hold whether or not the processes use Redis yet.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.cluster_helpers import (
    CLAIM_KEY,
    NGINX_CONF,
    REDIS_BASE,
    Cluster,
    Nginx,
    RedisServer,
    claim_redis_db,
    cluster,
    nginx,
    private_redis,
    redis_url,
    release_redis_db,
    render_nginx_conf,
)
from tests.test_cli import one_turn
from tests.test_recovery import poll, processes

__all__ = ["cluster", "nginx", "private_redis", "redis_url"]  # the fixtures these tests use

LOG_TIMEOUT_S = 10.0


async def healthz(http_url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=http_url, timeout=5) as http:
        return await http.get("/healthz")


# -- parley serve processes ------------------------------------------------------------------------


async def test_a_process_can_be_stopped_continued_terminated_and_killed(cluster: Cluster) -> None:
    a, b = await cluster.spawn_many("a", "b")
    cluster.stop(a)
    with pytest.raises(httpx.TimeoutException):
        async with httpx.AsyncClient(base_url=a.http_url, timeout=0.5) as http:
            await http.get("/healthz")
    cluster.cont(a)
    assert (await healthz(a.http_url)).status_code == 200
    assert await cluster.terminate(a) == 0, a.describe()  # SIGTERM: a graceful shutdown
    cluster.kill(b)
    assert b.proc.returncode == -9


# -- nginx -----------------------------------------------------------------------------------------


def test_the_shipped_config_is_valid_as_it_stands(nginx: Nginx) -> None:
    nginx.check(NGINX_CONF)


def test_rendering_rewrites_only_the_listen_and_upstream_lines() -> None:
    template = NGINX_CONF.read_text()
    rendered = render_nginx_conf(template, 4321, [7001, 7002, 7003])
    assert re.findall(r"^\s*server 127\.0\.0\.1:\d+;$", rendered, re.MULTILINE) == [
        "        server 127.0.0.1:7001;",
        "        server 127.0.0.1:7002;",
        "        server 127.0.0.1:7003;",
    ]
    assert re.findall(r"^\s*listen .*$", rendered, re.MULTILINE) == ["        listen 127.0.0.1:4321;"]
    rewritten = re.compile(r"\s*(listen|server) [^{]*;")
    kept = [line for line in template.splitlines() if not rewritten.match(line)]
    assert kept == [line for line in rendered.splitlines() if not rewritten.match(line)]


async def test_two_processes_share_one_database_and_nginx_takes_turns_between_them(
    cluster: Cluster, nginx: Nginx
) -> None:
    a, b = await cluster.spawn_many("a", "b")
    for server in (a, b):
        response = await healthz(server.http_url)
        assert response.status_code == 200, response.text
        assert response.json()["database"] == "ok"
    rows = await processes(cluster.engine)  # both registered in the one database the harness made
    assert {a.proc.pid, b.proc.pid} <= {row.pid for row in rows.values()}

    await nginx.start([a.port, b.port])
    for _ in range(6):
        assert (await healthz(nginx.http_url)).status_code == 200
    served = await poll(
        lambda: asyncio.to_thread(nginx.upstreams),
        lambda s: len(s) == 6,
        LOG_TIMEOUT_S,
        "six requests logged",
    )
    assert set(served) == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
    assert served == served[:2] * 3, f"not round-robin: {served}"


async def test_a_chat_turn_through_nginx_on_each_process(cluster: Cluster, nginx: Nginx) -> None:
    a, b = await cluster.spawn_many("a", "b")
    await nginx.start([a.port, b.port])
    for prompt in ("first socket", "second socket"):  # round-robin: one socket to each process
        turn = await one_turn(nginx.ws_url, cluster.token("harness"), "demo", prompt)
        assert turn.status == "completed" and turn.text, turn
    served = await poll(
        lambda: asyncio.to_thread(nginx.upstreams),
        lambda s: len(s) == 2,
        LOG_TIMEOUT_S,
        "both sockets logged",
    )
    assert sorted(served) == sorted([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
    assert "token=" not in (nginx.prefix / "access.log").read_text(), "tokens must stay out of the access log"


async def test_nginx_lets_parleys_large_heads_through_and_refuses_large_bodies_in_its_words(
    cluster: Cluster, nginx: Nginx
) -> None:
    server = await cluster.spawn("a")
    await nginx.start([server.port])
    async with httpx.AsyncClient(timeout=10) as http:
        big_head = await http.get(
            f"{nginx.http_url}/healthz?pad={'p' * 20_000}", headers={"X-Pad": "h" * 30_000}
        )
        assert big_head.status_code == 200, big_head.text  # a 50 KiB head fits Parley's 64 KiB
        body = b"x" * (8 * 1024 * 1024 + 1)
        refusals = [
            await http.post(f"{url}/api/v1/sessions", content=body)
            for url in (nginx.http_url, server.http_url)
        ]
    by_nginx, by_parley = refusals
    assert by_parley.status_code == by_nginx.status_code == 413
    assert by_nginx.headers["content-type"] == "application/json"
    assert by_nginx.json() == by_parley.json(), "nginx's 413 is not Parley's"


# -- Redis -----------------------------------------------------------------------------------------


async def test_the_claimed_redis_db_is_empty_but_for_its_claim_and_no_one_elses(redis_url: str) -> None:
    async with Redis.from_url(redis_url) as client:
        assert await client.keys("*") == [CLAIM_KEY.encode()]
    other = await claim_redis_db(REDIS_BASE, "another test")
    assert other is not None and other != redis_url
    await release_redis_db(other, "another test")


async def test_a_private_redis_stops_and_starts_again_empty_on_its_port(private_redis: RedisServer) -> None:
    async with Redis.from_url(private_redis.url) as client:
        await client.set("k", "v")
        port = private_redis.port
        assert await private_redis.stop() == 0
        with pytest.raises(RedisConnectionError):
            await client.ping()
        await private_redis.start()
        assert private_redis.port == port
        assert await client.ping()
        assert await client.get("k") is None
