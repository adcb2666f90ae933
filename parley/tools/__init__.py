"""The tool layer for agentic turns: specs, a registry that runs calls safely, built-ins and MCP tools.

The turn loop builds one ``ToolRegistry`` at startup (``builtin_tools()`` plus ``McpManager.tools()``),
turns a request's ``user_settings.text.tools`` into a ``ToolSelection`` with ``registry.select(names)``,
offers ``selection.specs`` to the model, and runs what it asks for with ``selection.run_all(calls, ctx)``.
"""

from parley.tools.base import (
    FunctionTool,
    SessionSearch,
    Tool,
    ToolCall,
    ToolContext,
    ToolError,
    ToolResult,
    ToolSpec,
)
from parley.tools.builtin import builtin_tools
from parley.tools.mcp import (
    HttpServerConfig,
    McpManager,
    McpServerConfig,
    McpTool,
    ServerStatus,
    StdioServerConfig,
    load_mcp_config,
)
from parley.tools.registry import ToolLimits, ToolRegistry, ToolSelection

__all__ = [
    "FunctionTool",
    "HttpServerConfig",
    "McpManager",
    "McpServerConfig",
    "McpTool",
    "ServerStatus",
    "SessionSearch",
    "StdioServerConfig",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolLimits",
    "ToolRegistry",
    "ToolResult",
    "ToolSelection",
    "ToolSpec",
    "builtin_tools",
    "load_mcp_config",
]
