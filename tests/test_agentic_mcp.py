"""MCP tools in agentic turns: a small MCP server (tests/tools/fake_mcp_server.py) configured through the
MCP settings file, so the app starts it with itself, offers its tools, and stops it when it stops."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, live_server, make_settings
from tests.tools.test_mcp import wait_for_line

SERVER = Path(__file__).parent / "tools" / "fake_mcp_server.py"
TURN_TIMEOUT_S = 20.0
CANCEL_BOUND_S = 0.5


def mcp_file(tmp_path: Path, pid_file: Path) -> Path:
    path = tmp_path / "mcp.toml"
    path.write_text(
        f"""
[mcp_servers.fake]
transport = "stdio"
command = {json.dumps(sys.executable)}
args = [{json.dumps(str(SERVER))}]
env = {{ FAKE_MCP_PID_FILE = {json.dumps(str(pid_file))} }}

[mcp_servers.broken]
transport = "stdio"
command = {json.dumps(sys.executable)}
args = ["-c", "raise SystemExit(3)"]
startup_timeout_s = 10
"""
    )
    return path


@pytest.fixture
async def mcp_server(tmp_path: Path, database_url: str | None) -> AsyncIterator[LiveServer]:
    """Parley (SQLite and PostgreSQL) with the fake MCP server, and one that cannot start, configured."""
    pid_file = tmp_path / "mcp.pid"
    settings = make_settings(tmp_path, database_url, mcp_file=mcp_file(tmp_path, pid_file))
    async with live_server(settings) as live:
        yield live
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # the app stopped the server process with itself
        os.kill(pid, 0)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


async def test_the_app_starts_the_configured_servers_and_lists_their_tools(mcp_server: LiveServer) -> None:
    async with mcp_server.http() as http:
        body = (await http.get("/api/v1/tools")).json()
    names = [tool["name"] for tool in body["tools"]]
    assert names[:3] == ["current_time", "calculator", "search_sessions"]
    assert {"fake__add", "fake__slow", "fake__fail", "fake__getenv"} <= set(names)
    servers = {s["name"]: s for s in body["mcp_servers"]}
    assert servers["fake"]["state"] == "running" and "fake__add" in servers["fake"]["tools"]
    assert servers["broken"] == {"name": "broken", "transport": "stdio", "state": "failed", "tools": []}
    add = next(tool for tool in body["tools"] if tool["name"] == "fake__add")
    assert set(add["parameters"]["properties"]) == {"a", "b"}


async def test_mcp_tools_in_a_turn_with_a_failure_and_the_next_turns_context(mcp_server: LiveServer) -> None:
    options = {
        "tool_calls": [
            call("fake__add", a=2, b=3),
            call("fake__fail", message="no luck"),
            call("fake__rpc_error", code=-32000, message="rpc went wrong"),
            call("calculator", expression="2*3"),
        ]
    }
    tools = ["fake__add", "fake__fail", "fake__rpc_error", "calculator"]
    async with await mcp_server.client() as client:
        summary = await client.turn(await client.chat("Add", tools=tools, options=options), TURN_TIMEOUT_S)
        again = await client.turn(
            await client.chat(
                "Once more",
                tools=["fake__add"],
                session_id=summary.session_id or "",
                options={"tool_calls": [call("fake__add", a=40, b=2)]},
            ),
            TURN_TIMEOUT_S,
        )
    assert summary.status == "completed"
    results = {
        u["name"]: r for u in summary.tool_uses for r in summary.tool_results if r["call_id"] == u["call_id"]
    }
    assert results["fake__add"] == {
        "call_id": results["fake__add"]["call_id"],
        "output": "5",
        "is_error": False,
    }
    assert results["fake__fail"]["is_error"] and "no luck" in results["fake__fail"]["output"]
    assert results["fake__rpc_error"]["is_error"]
    assert results["fake__rpc_error"]["output"] == "The MCP server 'fake' failed: rpc went wrong"
    assert results["calculator"]["output"] == "6"
    assert summary.text == (
        "Tool results: fake__add: 5; fake__fail (error): Error executing tool fail: no luck; "
        "fake__rpc_error (error): The MCP server 'fake' failed: rpc went wrong; calculator: 6"
    )
    assert again.status == "completed" and again.tool_results[0]["output"] == "42"


async def test_a_server_that_died_fails_its_calls_and_is_listed_failed(
    mcp_server: LiveServer, tmp_path: Path
) -> None:
    os.kill(int((tmp_path / "mcp.pid").read_text()), signal.SIGKILL)
    options = {"tool_calls": [call("fake__add", a=1, b=2)]}
    async with await mcp_server.client() as client:
        summary = await client.turn(
            await client.chat("Add", tools=["fake__add"], options=options), TURN_TIMEOUT_S
        )
    async with mcp_server.http() as http:
        body = (await http.get("/api/v1/tools")).json()
    assert summary.status == "completed"  # the turn goes on: the model is told
    assert [(r["output"], r["is_error"]) for r in summary.tool_results] == [
        ("The MCP server 'fake' closed the connection.", True)
    ]
    servers = {s["name"]: s for s in body["mcp_servers"]}
    assert servers["fake"] == {"name": "fake", "transport": "stdio", "state": "failed", "tools": []}
    assert "fake__add" in {tool["name"] for tool in body["tools"]}  # still offered, as an error result


async def test_cancel_inside_a_slow_mcp_tool(mcp_server: LiveServer, tmp_path: Path) -> None:
    marker = tmp_path / "slow.marker"
    options = {"tool_calls": [call("fake__slow", seconds=30, marker=str(marker))]}
    async with await mcp_server.client() as client:
        rid = await client.chat("Slowly", tools=["fake__slow"], options=options)
        await client.wait_for(rid, "toolUse", TURN_TIMEOUT_S)
        await wait_for_line(marker, "started")  # the server has the call: the tool is running
        sent = time.monotonic()
        await client.send({"type": "cancel", "request_id": rid})
        await client.wait_for(rid, "cancelled")
        latency = time.monotonic() - sent
        summary = await client.turn(rid)
        after = await client.turn(
            await client.chat(
                "Still there?", tools=["fake__add"], options={"tool_calls": [call("fake__add", a=1, b=1)]}
            ),
            TURN_TIMEOUT_S,
        )
    assert summary.status == "cancelled"
    assert latency < CANCEL_BOUND_S, f"the cancel took {latency:.3f} s"
    assert summary.tool_results[0]["is_error"] and summary.tool_results[0]["output"].startswith("Cancelled")
    await wait_for_line(marker, "cancelled")  # the SDK told the server: its handler was cancelled too
    assert after.status == "completed" and after.tool_results[0]["output"] == "2"  # the session goes on


async def test_a_bad_mcp_file_stops_the_app_from_starting(tmp_path: Path) -> None:
    from parley.app import create_app

    path = tmp_path / "bad.toml"
    path.write_text('[mcp_servers.x]\ntransport = "carrier-pigeon"\n')
    with pytest.raises(ValueError, match=r"mcp_servers\.x"):
        create_app(make_settings(tmp_path, mcp_file=path))
