"""Running Parley as an operator does: its logs (one format, JSON on request, safe from what clients send),
its health endpoints for load balancers, its documentation with no network."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from parley.auth import mint_token
from parley.logs import MAX_MESSAGE_CHARS
from parley.protocol import SNAKE_NAMES, SNAKE_STREAM_ERROR, SNAKE_TTS_NOT_REQUESTED, ControlType, Event
from tests.cluster_helpers import RedisServer, private_redis
from tests.conftest import PG_ADMIN_DSN, LiveServer, live_server, make_settings
from tests.test_cli import ServeProcess, cli_env, parley_serve
from tests.wsclient import ChatClient

__all__ = ["private_redis"]  # a fixture, used by name

SECRET = "operability-secret-" + "o" * 40
FORGED = "2026-01-01 00:00:00,000 ERROR parley.app: forged"
LONGEST_LINE = MAX_MESSAGE_CHARS + 2048  # a record's message is cut; its other fields are short
LEVELS = "TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL"
TEXT_LINE = re.compile(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} ({LEVELS}) \S+: ")


async def client_traffic(server: ServeProcess) -> str | None:
    """Requests carrying hostile strings: a newline in a path and in a token, a 60 KB path, a 200 KB
    request_id; and one turn that fails (a WARNING while it runs). Returns that turn's session id."""
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        await http.get("/nope%0a" + FORGED.replace(" ", "%20"))
        await http.get("/" + "p" * 60_000)
    with pytest.raises(InvalidStatus):
        async with connect(f"{server.ws_url}?token=bad%0a{FORGED.replace(' ', '%20')}", open_timeout=10):
            pass
    token = mint_token(SECRET, "1", 300)
    async with await ChatClient.open(server.ws_url, token) as client:
        huge = "r\n" + FORGED + "x" * 200_000
        await client.chat("Hi", request_id=huge)  # the turn carries an id the server makes up
        while not any(client.finished(request_id) for request_id in client.turns):
            await client.pump()
        failed = await client.turn(await client.chat("Hi", request_id="logs-turn", options={"fail_after": 1}))
        assert failed.status == "error"
        await client.send({"type": "cancel", "request_id": huge})
        await client.send({"type": "resume", "request_id": huge})
        await client.pump()  # the resume's refusal: both frames were read
    return failed.session_id


def all_lines(server: ServeProcess) -> list[str]:
    return [line for line in (server.stdout + server.stderr).splitlines() if line]


async def test_json_logs_are_one_object_a_line_whatever_clients_send(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data", PARLEY_JWT_SECRET=SECRET, PARLEY_LOG_FORMAT="json")
    async with parley_serve(tmp_path, env) as server:
        session_id = await client_traffic(server)
        server.signal()
        assert await server.wait_exit() == 0
    lines = all_lines(server)
    records: list[dict[str, Any]] = []
    for line in lines:
        assert len(line) < LONGEST_LINE, line[:300]
        records.append(json.loads(line))  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= record.keys() for record in records)
    loggers = {record["logger"] for record in records}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers, loggers  # uvicorn's records, in the one format
    assert not any(record["msg"].startswith(FORGED) for record in records)  # inside a record, never a line
    assert any(len(r["msg"]) > 500 and "ppp" in r["msg"] for r in records)  # the 60 KB path, cut

    warned = [r for r in records if r["level"] == "WARNING" and r["logger"] == "parley.providers"]
    assert len(warned) == 1, warned
    assert (warned[0].get("request_id"), warned[0].get("session_id")) == ("logs-turn", session_id)

    refused = [r for r in records if "refused a WebSocket" in r["msg"]]
    assert refused and all(r["level"] == "INFO" for r in refused)
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], "a refusal is not an error"


async def test_text_logs_have_one_format_and_escape_a_forged_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data", PARLEY_JWT_SECRET=SECRET)
    async with parley_serve(tmp_path, env) as server:
        await client_traffic(server)
        server.signal()
        assert await server.wait_exit() == 0
    lines = all_lines(server)
    for line in lines:
        assert TEXT_LINE.match(line), line[:300]  # a timestamp and a level on every line, uvicorn's too
        assert len(line) < LONGEST_LINE, line[:300]
    assert not any(line.startswith(FORGED) for line in lines)
    assert any(" uvicorn.access: " in line for line in lines)
    assert any("request_id=logs-turn" in line for line in lines)
    refusals = [line for line in lines if "refused a WebSocket" in line]
    assert refusals and all(" INFO " in line for line in refusals)


# -- /livez and /readyz -------------------------------------------------------------------------------


async def test_livez_and_readyz_when_all_is_well(server: LiveServer) -> None:
    async with server.http(None) as http:
        live, ready, health = await http.get("/livez"), await http.get("/readyz"), await http.get("/healthz")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ok", "database": "ok"})
    assert health.json() == {"status": "ok", "database": "ok", "running_turns": 0}  # as it was


async def test_readyz_says_draining_while_the_process_drains(sqlite_server: LiveServer) -> None:
    async with sqlite_server.http(None) as http:
        await sqlite_server.runtime.supervisor.drain(1)  # what SIGTERM does first
        ready, live = await http.get("/readyz"), await http.get("/livez")
    assert (ready.status_code, ready.json()) == (503, {"status": "unavailable", "reason": "draining"})
    assert live.status_code == 200  # draining is no reason to restart it


async def test_readyz_is_503_while_the_database_is_unreachable(tmp_path: Path, postgres_url: str) -> None:
    database = make_url(postgres_url).database
    async with live_server(make_settings(tmp_path, postgres_url)) as live, live.http(None) as http:
        assert (await http.get("/readyz")).status_code == 200
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
            )
            ready, live_now = await http.get("/readyz"), await http.get("/livez")
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
            await admin.close()
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "unavailable",
            "database": "unreachable",
            "reason": "database unreachable",
        }
        assert live_now.status_code == 200
        assert (await http.get("/readyz")).status_code == 200  # ready again once it answers


async def test_readyz_is_503_while_redis_is_unreachable(
    tmp_path: Path, postgres_url: str, private_redis: RedisServer
) -> None:
    settings = make_settings(tmp_path, postgres_url, redis_url=private_redis.url)
    async with live_server(settings) as live, live.http(None) as http:
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ok", "database": "ok", "redis": "ok"})
        await private_redis.stop()
        ready, health = await http.get("/readyz"), await http.get("/healthz")
        await private_redis.start()
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "database": "ok",
        "redis": "unreachable",
        "reason": "redis unreachable",
    }
    assert (health.status_code, health.json()["status"]) == (200, "degraded")  # /healthz as it was


# -- /docs, /redoc and /asyncapi.json, offline --------------------------------------------------------

ASSET_URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|\burl:\s*'([^']+)'""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_load_everything_from_the_server_itself(sqlite_server: LiveServer, page: str) -> None:
    async with sqlite_server.http(None) as http:
        response = await http.get(page)
        assert response.status_code == 200
        html = response.text
        assert not re.search(r"https?://", html), "the page names an outside URL"
        urls = [a or b for a, b in ASSET_URL.findall(html)]
        if page == "/redoc":
            urls += re.findall(r'spec-url="([^"]+)"', html)
        assert len(urls) >= (4 if page == "/docs" else 3), urls  # script, style, icon, the OpenAPI
        for url in urls:
            assert url.startswith("/"), url
            asset = await http.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 0, url


async def test_the_openapi_links_the_asyncapi_of_the_websocket(sqlite_server: LiveServer) -> None:
    async with sqlite_server.http(None) as http:
        openapi = (await http.get("/openapi.json")).json()
        assert "/asyncapi.json" in openapi["info"]["description"]
        document = (await http.get("/asyncapi.json")).json()
    assert document["asyncapi"] == "3.0.0"
    assert document["servers"]["parley"] == {
        "host": f"127.0.0.1:{sqlite_server.port}",
        "protocol": "ws",
        "pathname": "/chat/ws",
    }
    messages = document["channels"]["chat"]["messages"]
    types = [message["payload"]["properties"].get("type", {}) for message in messages.values()]
    sent = {name for kind in types for name in kind.get("enum", [])}
    for event in Event:  # every event, in both dialects
        assert {event.value, SNAKE_NAMES[event]} <= sent, event
    assert {SNAKE_STREAM_ERROR, SNAKE_TTS_NOT_REQUESTED} <= sent
    for kind in ControlType:
        assert f"client.{kind.value}" in messages, kind
    chat = messages["client.chat"]["payload"]
    assert {"request_id", "user_input", "user_settings"} <= chat["properties"].keys()
    assert_refs_resolve(document, document)


def assert_refs_resolve(node: Any, document: dict[str, Any]) -> None:
    """Every ``$ref`` points at something in the document."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target: Any = document
            for part in ref.removeprefix("#/").split("/"):
                assert isinstance(target, dict) and part in target, ref
                target = target[part]
        for value in node.values():
            assert_refs_resolve(value, document)
    elif isinstance(node, list):
        for value in node:
            assert_refs_resolve(value, document)
