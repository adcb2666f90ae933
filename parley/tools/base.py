"""The tool layer's vocabulary: what a tool is, what the model asks for, and what it gets back.

A model sees ``ToolSpec``s, asks for ``ToolCall``s and is shown ``ToolResult``s. A ``Tool`` does the work;
the registry (``parley.tools.registry``) wraps every run in validation, a timeout, an output cap and error
capture, so a tool may simply raise ``ToolError`` with a sentence meant for the model.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

# OpenAI's function-name rule; Anthropic's tool names follow the same pattern.
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class ToolError(Exception):
    """A failure meant for the model: its message becomes the ``is_error`` result's output, verbatim.

    Raise it for anything the model could act on (a bad time zone, an MCP tool's own error text). Any
    other exception is reported to the model as a generic failure and logged, so internals never leak.
    """

    def __init__(self, message: str, *, code: str = "tool_failed") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class ToolSpec:
    """What a model is told about a tool: a stable name, a description and a JSON Schema for arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not TOOL_NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must match {TOOL_NAME.pattern}")
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: the parameters schema must be of type 'object'")

    def to_openai(self) -> dict[str, Any]:
        """The Chat Completions ``tools`` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def to_anthropic(self) -> dict[str, Any]:
        """The Messages API ``tools`` entry."""
        return {"name": self.name, "description": self.description, "input_schema": self.parameters}


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for.

    ``arguments`` is the decoded JSON object, or the raw JSON text as a provider streamed it (OpenAI sends
    a string, Anthropic an object); the registry decodes text itself so malformed JSON becomes an error
    result the model can correct instead of an exception in the turn loop.
    """

    call_id: str
    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)


@dataclass(frozen=True)
class ToolResult:
    """What the model is shown for one call. ``code`` names the failure for logs and metrics."""

    call_id: str
    output: str
    is_error: bool = False
    code: str | None = None


class SearchHitLike(Protocol):
    """The fields of ``parley.store.search.SearchHit`` the session-search tool reads."""

    @property
    def message_id(self) -> UUID: ...
    @property
    def session_id(self) -> UUID: ...
    @property
    def session_title(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def snippet(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...


class SessionSearch(Protocol):
    """``Search(engine).messages``: a page of one customer's messages matching a query, best first."""

    def __call__(
        self, customer_id: str, query: str, limit: int, offset: int
    ) -> Awaitable[Sequence[SearchHitLike]]: ...


@dataclass(frozen=True)
class ToolContext:
    """What the server knows about the request a tool runs for.

    ``customer_id`` comes from the verified token, never from tool arguments: tools that touch stored data
    pass it to ``search`` (and future store callables) themselves, so a model cannot name another customer.
    """

    customer_id: str
    search: SessionSearch


class Tool(Protocol):
    """Anything the registry can run: a spec and an async ``run`` returning the output text.

    ``run`` receives arguments already validated against ``spec.parameters``; it raises ``ToolError`` for
    failures the model should see. It must stop promptly when its task is cancelled (await, don't block).
    """

    @property
    def spec(self) -> ToolSpec: ...

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> str: ...


ToolFunction = Callable[[Mapping[str, Any], ToolContext], Awaitable[str]]


@dataclass(frozen=True)
class FunctionTool:
    """A tool made of a spec and an async function: how the built-ins (and tests) define tools."""

    spec: ToolSpec
    function: ToolFunction

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> str:
        return await self.function(arguments, context)
