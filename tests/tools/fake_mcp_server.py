"""A tiny MCP server for the tool layer's tests, on the SDK's ``MCPServer`` (v1's ``FastMCP``).

``python fake_mcp_server.py`` speaks MCP over stdio; ``python fake_mcp_server.py PORT`` serves streamable
HTTP on 127.0.0.1:PORT at ``/mcp``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError

server: MCPServer = MCPServer("parley-test", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def slow(seconds: float, marker: str = "") -> str:
    """Sleep for a while; with a marker file, write "started" first and "cancelled" if cancelled."""
    if marker:
        await anyio.Path(marker).write_text("started\n")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        if marker:
            with anyio.CancelScope(shield=True):
                await anyio.Path(marker).write_text("started\ncancelled\n")
        raise
    return "slept"


@server.tool()
def fail(message: str) -> str:
    """Fail with the given message."""
    raise ToolError(message)


@server.tool()
def getenv(name: str) -> str:
    """An environment variable of this server process ("" when unset)."""
    return os.environ.get(name, "")


@server.tool()
def rpc_error(code: int, message: str) -> str:
    """Answer the call with a JSON-RPC error (not a tool error result) of this code and message."""
    raise MCPError(code=code, message=message)


@server.tool(name="text.upper")
def upper(text: str) -> str:
    """Upper-case a text (a dotted name, which providers do not allow as is)."""
    return text.upper()


if __name__ == "__main__":
    if pid_file := os.environ.get("FAKE_MCP_PID_FILE"):
        Path(pid_file).write_text(str(os.getpid()))
    if len(sys.argv) > 1:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
    else:
        server.run()
