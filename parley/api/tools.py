"""``GET /api/v1/tools``: the tools a chat request may select with ``user_settings.text.tools``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from parley.api.deps import AppRuntime, CurrentCustomer

router = APIRouter(tags=["tools"])


class ToolOut(BaseModel):
    name: str = Field(description="What to put in user_settings.text.tools; MCP tools are <server>__<tool>")
    description: str
    parameters: dict[str, Any] = Field(description="The JSON Schema of the tool's arguments")


class McpServerOut(BaseModel):
    name: str
    transport: str = Field(description="stdio or http")
    state: str = Field(description="starting, running, failed or stopped")
    tools: list[str] = Field(description="The names of the tools it offers (none unless running)")


class ToolList(BaseModel):
    tools: list[ToolOut]
    mcp_servers: list[McpServerOut] = Field(description="The configured MCP servers (PARLEY_MCP_FILE)")


@router.get("/tools")
async def list_tools(_customer: CurrentCustomer, runtime: AppRuntime) -> ToolList:
    """Every tool this server offers (built-ins, then those of its MCP servers as found at startup: a server
    that died later keeps its tools here, and calling one gives an error result), and the MCP servers'
    state (``failed`` once a call found it dead, and then no tools). Why a server failed is in the server's
    log, not here."""
    tools = [
        ToolOut(name=spec.name, description=spec.description, parameters=dict(spec.parameters))
        for spec in runtime.services.tools.specs()
    ]
    servers = [
        McpServerOut(name=s.name, transport=s.transport, state=s.state, tools=list(s.tools))
        for s in (runtime.mcp.status() if runtime.mcp is not None else [])
    ]
    return ToolList(tools=tools, mcp_servers=servers)
