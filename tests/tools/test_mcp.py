"""MCP servers through the manager and the registry: a real SDK server over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import anyio
import pytest

from parley.tools import (
    HttpServerConfig,
    McpManager,
    StdioServerConfig,
    ToolCall,
    ToolContext,
    ToolLimits,
    ToolRegistry,
    builtin_tools,
)
from parley.tools.base import SearchHitLike

SERVER = Path(__file__).with_name("fake_mcp_server.py")
CONFIG = StdioServerConfig | HttpServerConfig


async def no_search(customer_id: str, query: str, limit: int, offset: int) -> Sequence[SearchHitLike]:
    return []


CONTEXT = ToolContext(customer_id="c-1", search=no_search)


def stdio_config(name: str = "fake", **settings: object) -> StdioServerConfig:
    return StdioServerConfig.model_validate(
        {"name": name, "transport": "stdio", "command": sys.executable, "args": [str(SERVER)], **settings}
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def http_server(log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The fake server on streamable HTTP, in its own process: its URL and process, stopped by its pid."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(SERVER), str(port)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"the MCP test server exited: {log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the MCP test server did not start listening")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp", process
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with http_server(tmp_path_factory.mktemp("mcp-http") / "server.log") as (url, _):
        yield url


@pytest.fixture(params=["stdio", "http"])
def config(request: pytest.FixtureRequest) -> CONFIG:
    if request.param == "stdio":
        return stdio_config()
    url: str = request.getfixturevalue("http_url")
    return HttpServerConfig(name="fake", transport="http", url=url)


async def wait_for_line(path: Path, line: str, timeout_s: float = 10) -> None:
    """Until the fake server (another process: no event to wait on) has written ``line`` to ``path``."""
    marker = anyio.Path(path)
    for _ in range(int(timeout_s / 0.01)):
        if await marker.exists() and line in (await marker.read_text()).split():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the MCP test server never wrote {line!r}")


async def test_lists_and_calls_tools(config: CONFIG) -> None:
    async with McpManager([config]) as manager:
        [status] = manager.status()
        assert (status.name, status.transport, status.state, status.error) == (
            "fake",
            config.transport,
            "running",
            None,
        )
        names = [tool.spec.name for tool in manager.tools()]
        assert names[:4] == ["fake__add", "fake__slow", "fake__fail", "fake__getenv"]
        [upper] = [name for name in names if name.startswith("fake__text_upper_")]
        assert status.tools == names

        registry = ToolRegistry([*builtin_tools(), *manager.tools()])
        add = registry.get("fake__add")
        assert add is not None and add.spec.description == "Add two integers."
        assert add.spec.parameters["required"] == ["a", "b"]

        added = await registry.run(ToolCall("1", "fake__add", {"a": 1, "b": 2}), CONTEXT)
        assert (added.output, added.is_error) == ("3", False)
        shouted = await registry.run(ToolCall("2", upper, {"text": "hi"}), CONTEXT)
        assert shouted.output == "HI"
        failed = await registry.run(ToolCall("3", "fake__fail", {"message": "boom"}), CONTEXT)
        assert (failed.output, failed.is_error, failed.code) == (
            "Error executing tool fail: boom",
            True,
            "mcp_tool_error",
        )
        invalid = await registry.run(ToolCall("4", "fake__add", {"a": "one"}), CONTEXT)
        assert invalid.is_error and invalid.code == "invalid_arguments"

    assert manager.status()[0].state == "stopped"
    after = await registry.run(ToolCall("5", "fake__add", {"a": 1, "b": 2}), CONTEXT)
    assert (after.output, after.code) == ("The MCP server 'fake' is not running.", "mcp_unavailable")


@pytest.mark.parametrize("code", [-32000, -32603, 7])
async def test_a_json_rpc_error_shows_the_servers_message_and_the_session_goes_on(
    config: CONFIG, code: int
) -> None:
    """-32000 is JSON-RPC's first server-error code and also the SDK's code for a closed connection: a live
    server that answers with it is not taken for a closed one."""
    async with McpManager([config]) as manager:
        registry = ToolRegistry(manager.tools())
        arguments = {"code": code, "message": "rpc went wrong"}
        failed = await registry.run(ToolCall("1", "fake__rpc_error", arguments), CONTEXT)
        assert (failed.output, failed.is_error, failed.code) == (
            "The MCP server 'fake' failed: rpc went wrong",
            True,
            "mcp_error",
        )
        assert manager.status()[0].state == "running"
        after = await registry.run(ToolCall("2", "fake__add", {"a": 2, "b": 3}), CONTEXT)
        assert (after.output, after.is_error) == ("5", False)


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_a_server_that_dies_fails_its_calls_and_is_listed_failed(
    transport: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        if transport == "stdio":
            pid_file = tmp_path / "pid"
            config: CONFIG = stdio_config(env={"FAKE_MCP_PID_FILE": str(pid_file)})
        else:
            url, process = stack.enter_context(http_server(tmp_path / "server.log"))
            config = HttpServerConfig(name="fake", transport="http", url=url)
        manager = await stack.enter_async_context(McpManager([config]))
        registry = ToolRegistry(manager.tools())
        assert (await registry.run(ToolCall("1", "fake__add", {"a": 1, "b": 2}), CONTEXT)).output == "3"

        if transport == "stdio":
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        else:
            process.kill()
            process.wait()
        for call_id in ("2", "3"):
            gone = await registry.run(ToolCall(call_id, "fake__add", {"a": 1, "b": 2}), CONTEXT)
            assert (gone.is_error, gone.code) == (True, "mcp_unavailable")
            assert gone.output in (
                "The MCP server 'fake' closed the connection.",
                "The MCP server 'fake' is not running.",  # HTTP: the transport has given up, too
            )
            [status] = manager.status()
            assert (status.state, status.tools) == ("failed", [])  # no longer listed as running


async def test_a_cancelled_call_stops_at_once_and_the_session_goes_on(config: CONFIG, tmp_path: Path) -> None:
    marker = tmp_path / "slow.txt"
    async with McpManager([config]) as manager:
        registry = ToolRegistry(manager.tools())
        slow = ToolCall("1", "fake__slow", {"seconds": 30, "marker": str(marker)})
        task = asyncio.create_task(registry.run(slow, CONTEXT))
        await wait_for_line(marker, "started")

        begin = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.perf_counter() - begin < 0.1
        await wait_for_line(marker, "cancelled")  # the server was told, and stopped the tool

        after = await registry.run(ToolCall("2", "fake__add", {"a": 2, "b": 3}), CONTEXT)
        assert (after.output, after.is_error) == ("5", False)


async def test_a_timed_out_call_leaves_the_session_usable(config: CONFIG) -> None:
    async with McpManager([config]) as manager:
        registry = ToolRegistry(manager.tools(), limits=ToolLimits(timeout_s=0.2))
        timed_out = await registry.run(ToolCall("1", "fake__slow", {"seconds": 30}), CONTEXT)
        assert (timed_out.is_error, timed_out.code) == (True, "tool_timeout")
        after = await registry.run(ToolCall("2", "fake__add", {"a": 4, "b": 5}), CONTEXT)
        assert after.output == "9"


async def test_calls_to_one_server_run_concurrently(config: CONFIG) -> None:
    async with McpManager([config]) as manager:
        registry = ToolRegistry(manager.tools())
        calls = [ToolCall(str(i), "fake__slow", {"seconds": 0.4}) for i in range(3)]
        begin = time.perf_counter()
        results = await registry.run_all(calls, CONTEXT)
        assert [r.output for r in results] == ["slept"] * 3
        assert time.perf_counter() - begin < 1.0  # one after another would take 1.2 s


async def test_stdio_environment_and_tool_allow_list() -> None:
    config = stdio_config(env={"GREETING": "hello"}, env_vars=["PASSED", "UNSET"], tools=["getenv", "gone"])
    async with McpManager([config], env={"PASSED": "from parley", "NOT_PASSED": "x"}) as manager:
        assert [tool.spec.name for tool in manager.tools()] == ["fake__getenv"]
        registry = ToolRegistry(manager.tools())

        async def getenv(name: str) -> str:
            return (await registry.run(ToolCall("c", "fake__getenv", {"name": name}), CONTEXT)).output

        assert await getenv("GREETING") == "hello"
        assert await getenv("PASSED") == "from parley"
        assert await getenv("NOT_PASSED") == ""


async def test_stopping_ends_the_server_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    async with McpManager([stdio_config(env={"FAKE_MCP_PID_FILE": str(pid_file)})]):
        pid = int(pid_file.read_text())
        os.kill(pid, 0)  # running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_servers_that_fail_to_start_are_left_out(http_url: str) -> None:
    closed_port = free_port()
    configs: list[CONFIG] = [
        stdio_config("good"),
        StdioServerConfig(name="missing", transport="stdio", command="/nonexistent/mcp-server"),
        stdio_config("exits", args=["-c", "raise SystemExit(3)"]),
        stdio_config("hangs", args=["-c", "import time; time.sleep(60)"], startup_timeout_s=0.3),
        HttpServerConfig(name="refused", transport="http", url=f"http://127.0.0.1:{closed_port}/mcp"),
        HttpServerConfig(
            name="no-secret", transport="http", url=http_url, header_env={"Authorization": "NO_SUCH"}
        ),
    ]
    async with McpManager(configs, env={}) as manager:
        status = {s.name: s for s in manager.status()}
        assert status["good"].state == "running"
        assert {name for name, s in status.items() if s.state == "failed"} == {
            "missing",
            "exits",
            "hangs",
            "refused",
            "no-secret",
        }
        assert "No such file or directory" in (status["missing"].error or "")
        assert status["exits"].error == "Connection closed"
        assert status["hangs"].error == "did not start within 0.3 s"
        assert "ConnectError" in (status["refused"].error or "")
        assert (
            status["no-secret"].error
            == "the environment variable NO_SUCH (for the Authorization header) is not set"
        )
        assert {tool.server for tool in manager.tools()} == {"good"}

        registry = ToolRegistry(manager.tools())
        result = await registry.run(ToolCall("1", "good__add", {"a": 1, "b": 1}), CONTEXT)
        assert result.output == "2"


def test_server_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        McpManager([stdio_config("same"), stdio_config("same")])


async def test_no_servers() -> None:
    async with McpManager([]) as manager:
        assert manager.tools() == [] and manager.status() == []
