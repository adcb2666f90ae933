"""Tools from MCP servers (stdio and streamable HTTP), through the official ``mcp`` SDK.

Configuration is a TOML file with one table per server (``load_mcp_config``)::

    [mcp_servers.files]                      # the name prefixes its tools: files__read_file
    transport = "stdio"
    command = "npx"
    args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/shared"]
    env = { LOG_LEVEL = "info" }             # set for the server process
    env_vars = ["GITHUB_TOKEN"]              # passed through from Parley's environment
    tools = ["read_file", "list_directory"]  # optional: only these of the server's tools

    [mcp_servers.docs]
    transport = "http"                       # streamable HTTP
    url = "https://mcp.example.com/mcp"
    header_env = { Authorization = "DOCS_MCP_AUTHORIZATION" }  # header value from the environment
    startup_timeout_s = 10

``McpManager`` starts every server when the app starts and stops them when it stops. Each server's
``mcp.Client`` is entered and exited by one long-lived owner task, as anyio requires of the task groups
inside it; tool calls are sent from the caller's own task, which is safe (a request is a write to a memory
stream and a wait on another) and is what lets a cancelled call stop at once: the SDK then tells the
server ``notifications/cancelled`` and drops the late reply, and the session stays usable.

A server that fails to start is logged and left out; its tools are absent and the app starts anyway. A
server whose connection closes later is marked failed when a call finds it closed (nothing watches an idle
connection); its tools stay offered, and their calls fail with a result the model sees.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal

import anyio
import httpx2
from mcp import Client, StdioServerParameters, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

import parley
from parley.tools.base import TOOL_NAME, ToolContext, ToolError, ToolSpec
from parley.tools.registry import compile_validator

log = logging.getLogger("parley.tools.mcp")

# Letters and digits in words joined by single '-' or '_': "<server>__<tool>" then splits one way only.
SERVER_NAME = re.compile(r"^[a-zA-Z0-9]+(?:[-_][a-zA-Z0-9]+)*$")
MAX_SERVER_NAME = 32
SEPARATOR = "__"
MAX_TOOL_PAGES = 100
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)  # the SDK's own defaults: replies may stream for a while
MAX_REASON_CHARS = 300
CLOSED_MESSAGE = "Connection closed"  # the SDK's message for a connection it lost


# -- configuration ----------------------------------------------------------------------------------


class _ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    enabled: bool = True
    startup_timeout_s: float = Field(default=30.0, gt=0)
    tools: list[str] | None = None  # the server's own tool names to offer; None = all

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if len(name) > MAX_SERVER_NAME or not SERVER_NAME.match(name):
            raise ValueError(
                f"server names are at most {MAX_SERVER_NAME} letters and digits, in words joined by "
                "single '-' or '_'"
            )
        return name


class StdioServerConfig(_ServerConfig):
    """A server Parley runs as a child process, speaking MCP over its stdin and stdout."""

    transport: Literal["stdio"]
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    env_vars: list[str] = Field(default_factory=list)  # copied from Parley's environment when set
    cwd: str | None = None


class HttpServerConfig(_ServerConfig):
    """A server reached over MCP's streamable HTTP transport."""

    transport: Literal["http"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    header_env: dict[str, str] = Field(default_factory=dict)  # header name → variable holding its value

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return url


McpServerConfig = Annotated[StdioServerConfig | HttpServerConfig, Field(discriminator="transport")]
_SERVER_CONFIG: TypeAdapter[StdioServerConfig | HttpServerConfig] = TypeAdapter(McpServerConfig)


def load_mcp_config(path: Path) -> list[StdioServerConfig | HttpServerConfig]:
    """The enabled servers of an MCP file; any mistake in it raises ``ValueError`` naming the table."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read the MCP file {path}: {exc}") from None
    unknown = set(data) - {"mcp_servers"}
    if unknown:
        raise ValueError(
            f"MCP file {path}: unknown top-level keys {sorted(unknown)}; expected [mcp_servers.NAME]"
        )
    servers = data.get("mcp_servers", {})
    if not isinstance(servers, dict):
        raise ValueError(f"MCP file {path}: mcp_servers must be a table of [mcp_servers.NAME] tables")
    configs = [_server_config(path, name, table) for name, table in servers.items()]
    return [config for config in configs if config.enabled]


def _server_config(path: Path, name: str, table: Any) -> StdioServerConfig | HttpServerConfig:
    where = f"MCP file {path}: mcp_servers.{name}"
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    if "name" in table:
        raise ValueError(f"{where}: 'name' is not a setting, the table's key is the server's name")
    try:
        return _SERVER_CONFIG.validate_python({**table, "name": name})
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise ValueError(f"{where}: {problems}") from None


def _problem(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"] if part not in ("stdio", "http"))
    return f"{location}: {error['msg']}" if location else str(error["msg"])


# -- tools ---------------------------------------------------------------------------------------------


def exposed_name(server: str, tool: str) -> str:
    """``<server>__<tool>``, stable and valid for every provider (``[a-zA-Z0-9_-]{1,64}``).

    A tool name that does not fit (MCP allows dots and 128 characters) is cleaned and shortened, with a
    hash of the original appended so two such names never meet.
    """
    name = f"{server}{SEPARATOR}{tool}"
    if TOOL_NAME.match(name):
        return name
    digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
    room = 64 - len(server) - len(SEPARATOR) - len(digest) - 1
    cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", tool)[:room]
    return f"{server}{SEPARATOR}{cleaned}_{digest}"


@dataclass(frozen=True)
class McpTool:
    """One MCP server tool, as the registry sees it; runs forward to the manager's live session."""

    spec: ToolSpec
    server: str
    remote_name: str
    manager: McpManager = field(repr=False, compare=False)

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> str:
        return await self.manager.call(self.server, self.remote_name, arguments)


def result_text(result: types.CallToolResult) -> str:
    """Text items as they are; other content as a short placeholder the model can mention."""
    parts = [_content_text(block) for block in result.content]
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _content_text(block: types.ContentBlock) -> str:
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        return f"[{block.type}: {block.mime_type}, {_decoded_size(block.data)} bytes, not shown]"
    if isinstance(block, types.ResourceLink):
        return f"[resource link: {block.uri}]"
    resource = block.resource
    if isinstance(resource, types.TextResourceContents):
        return resource.text
    return f"[resource: {resource.uri}, {resource.mime_type or 'binary'}, not shown]"


def _decoded_size(data: str) -> int:
    try:
        return len(base64.b64decode(data, validate=False))
    except (binascii.Error, ValueError):
        return len(data)


# -- the manager ------------------------------------------------------------------------------------

State = Literal["starting", "running", "failed", "stopped"]


@dataclass
class ServerStatus:
    """What ``status()`` reports about one server, e.g. for a health endpoint."""

    name: str
    transport: str
    state: State = "starting"
    error: str | None = None
    tools: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Server:
    config: StdioServerConfig | HttpServerConfig
    status: ServerStatus
    client: Client | None = None
    tools: list[McpTool] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class McpManager:
    """Every configured MCP server's session, from app start to app stop: ``async with McpManager(...)``."""

    def __init__(
        self,
        configs: Sequence[StdioServerConfig | HttpServerConfig],
        *,
        env: Mapping[str, str] | None = None,
        shutdown_timeout_s: float = 10.0,
    ) -> None:
        names = [config.name for config in configs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"MCP server names must be unique: {duplicates}")
        self._env = os.environ if env is None else env
        self._shutdown_timeout_s = shutdown_timeout_s
        self._servers = {
            config.name: _Server(config, ServerStatus(config.name, config.transport)) for config in configs
        }

    async def __aenter__(self) -> McpManager:
        """Start every server at once; return when each is running, has failed, or ran out of time."""
        for server in self._servers.values():
            server.task = asyncio.create_task(self._own(server), name=f"mcp-server-{server.config.name}")
        try:
            await asyncio.gather(*(server.ready.wait() for server in self._servers.values()))
        except BaseException:
            await self._stop_all()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop_all()

    def tools(self) -> list[McpTool]:
        """The tools of every running server, to register in the ``ToolRegistry``."""
        return [tool for server in self._servers.values() for tool in server.tools]

    def status(self) -> list[ServerStatus]:
        return [server.status for server in self._servers.values()]

    async def call(self, server_name: str, tool: str, arguments: Mapping[str, Any]) -> str:
        """Call a tool on a running server, in the caller's task; failures raise ``ToolError``."""
        server = self._servers.get(server_name)
        client = server.client if server else None
        if server is None or client is None:
            raise ToolError(f"The MCP server {server_name!r} is not running.", code="mcp_unavailable")
        try:
            result = await client.call_tool(tool, dict(arguments))
        except MCPError as exc:
            if _connection_closed(exc):
                if server.status.state == "running":
                    self._fail(server, "the connection closed")
                raise ToolError(
                    f"The MCP server {server_name!r} closed the connection.", code="mcp_unavailable"
                ) from None
            # The server's own JSON-RPC error: its message is meant for the caller, so the model sees it.
            raise ToolError(
                f"The MCP server {server_name!r} failed: {_clipped(exc.message) or 'no message'}",
                code="mcp_error",
            ) from None
        except (OSError, httpx2.HTTPError, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise ToolError(
                f"The MCP server {server_name!r} could not be reached ({type(exc).__name__}).",
                code="mcp_unavailable",
            ) from None
        text = result_text(result)
        if result.is_error:
            raise ToolError(text or "The tool reported an error.", code="mcp_tool_error")
        return text

    async def _own(self, server: _Server) -> None:
        """The one task that enters, holds and exits this server's session (anyio's rule)."""
        config = server.config
        try:
            deadline = anyio.current_time() + config.startup_timeout_s
            with anyio.CancelScope(deadline=deadline) as startup:
                async with AsyncExitStack() as stack:
                    client = await stack.enter_async_context(await self._client(config, stack))
                    listed = await _list_tools(client)
                    startup.deadline = math.inf  # started: from now on only stop ends the session
                    self._attach(server, client, listed)
                    await server.stop.wait()
                    server.client = None  # new calls fail cleanly while the session closes
            if startup.cancelled_caught:
                self._fail(server, f"did not start within {config.startup_timeout_s:g} s")
        except Exception as exc:
            self._fail(server, _reason(exc), exc)
        finally:
            server.client = None
            if server.status.state != "failed":
                server.status.state = "stopped"
            server.ready.set()

    async def _client(self, config: StdioServerConfig | HttpServerConfig, stack: AsyncExitStack) -> Client:
        info = types.Implementation(name="parley", version=parley.__version__)
        if isinstance(config, StdioServerConfig):
            env = {**{k: self._env[k] for k in config.env_vars if k in self._env}, **config.env}
            params = StdioServerParameters(command=config.command, args=config.args, env=env, cwd=config.cwd)
            return Client(params, client_info=info, cache=None)
        headers = {**config.headers, **{h: self._required_env(v, h) for h, v in config.header_env.items()}}
        http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=HTTP_TIMEOUT))
        return Client(streamable_http_client(config.url, http_client=http), client_info=info, cache=None)

    def _required_env(self, variable: str, header: str) -> str:
        value = self._env.get(variable)
        if not value:
            raise ValueError(f"the environment variable {variable} (for the {header} header) is not set")
        return value

    def _attach(self, server: _Server, client: Client, listed: Sequence[types.Tool]) -> None:
        config = server.config
        wanted = None if config.tools is None else set(config.tools)
        tools: list[McpTool] = []
        for remote in listed:
            if wanted is not None and remote.name not in wanted:
                continue
            tool = _mcp_tool(self, config.name, remote)
            if tool is not None and all(tool.spec.name != other.spec.name for other in tools):
                tools.append(tool)
        missing = sorted((wanted or set()) - {remote.name for remote in listed})
        if missing:
            log.warning("MCP server %s offers none of the configured tools %s", config.name, missing)
        server.client, server.tools = client, tools
        server.status.state, server.status.tools = "running", [tool.spec.name for tool in tools]
        server.ready.set()
        log.info("MCP server %s started with %d tools", config.name, len(tools))

    def _fail(self, server: _Server, reason: str, exc: BaseException | None = None) -> None:
        server.status.state, server.status.error, server.status.tools = "failed", reason, []
        server.tools = []
        log.warning("MCP server %s is unavailable: %s", server.config.name, reason)
        if exc is not None:
            log.debug("MCP server %s failure", server.config.name, exc_info=exc)

    async def _stop_all(self) -> None:
        """Ask every owner to close its session; cancel the ones that have not finished in time."""
        tasks = [server.task for server in self._servers.values() if server.task is not None]
        for server in self._servers.values():
            server.stop.set()
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._shutdown_timeout_s)
        for task in late:
            log.warning("MCP server task %s did not stop in time; cancelling it", task.get_name())
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _mcp_tool(manager: McpManager, server: str, remote: types.Tool) -> McpTool | None:
    """The registry's view of a server tool, or None (logged) when its schema is unusable."""
    description = remote.description or remote.title or f"The {remote.name} tool of the {server} MCP server."
    try:
        spec = ToolSpec(exposed_name(server, remote.name), description, remote.input_schema)
        compile_validator(spec)
    except ValueError as exc:
        log.warning("MCP server %s: tool %r left out: %s", server, remote.name, exc)
        return None
    return McpTool(spec, server, remote.name, manager)


async def _list_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _connection_closed(exc: MCPError) -> bool:
    """Whether the SDK gave up on the connection, rather than the server answering with an error.

    The SDK reports a closed connection as code -32000 (``CONNECTION_CLOSED``), which is also JSON-RPC's
    first code for a server's own errors, so a live server may send it too; only the SDK's wording for a
    closed connection, "Connection closed", tells the two apart (the SDK matches its own by identity, an
    object its ``MCPError`` does not carry).
    """
    return exc.code == CONNECTION_CLOSED and exc.message == CLOSED_MESSAGE


def _reason(exc: BaseException) -> str:
    """One line on why a server failed: the first real error inside any exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return _clipped(f"{type(exc).__name__}: {text}" if not isinstance(exc, ValueError | MCPError) else text)


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"
