"""The tools a deployment offers, which of them a request selects, and running calls safely.

Every call goes through ``ToolRegistry.run``, which never raises (except the caller's own cancellation):
unknown tools, malformed or schema-invalid arguments, timeouts, oversized output and any exception a tool
raises all become a ``ToolResult`` with ``is_error=True`` that the model sees and can react to.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from parley.errors import ParleyError, ValidationFailed
from parley.tools.base import Tool, ToolCall, ToolContext, ToolError, ToolResult, ToolSpec

log = logging.getLogger("parley.tools")

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_OUTPUT_CHARS = 20_000
MIN_OUTPUT_CHARS = 200  # room for the truncation marker and some output
MAX_ERROR_DETAIL_CHARS = 500


@dataclass(frozen=True)
class ToolLimits:
    """Per-call safety limits: wall-clock time, and the longest output the model is shown."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        if self.max_output_chars < MIN_OUTPUT_CHARS:
            raise ValueError(f"max_output_chars must be at least {MIN_OUTPUT_CHARS}")


def truncate(output: str, max_chars: int) -> str:
    """``output`` cut to at most ``max_chars`` characters, ending with a marker saying how much was cut."""
    if len(output) <= max_chars:
        return output
    marker = f"\n[output truncated: {len(output)} characters in all, the first {{shown}} shown]"
    shown = max_chars - len(marker.format(shown=max_chars))
    return output[:shown] + marker.format(shown=shown)


def compile_validator(spec: ToolSpec) -> Validator:
    """A validator for the spec's schema (draft from ``$schema``, else 2020-12); bad schemas raise here."""
    schema = dict(spec.parameters)
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"tool {spec.name!r}: invalid parameters schema: {exc.message}") from None
    validator: Validator = cls(schema)
    return validator


class ToolRegistry:
    """Every tool this server can run, by name; built once at startup (built-ins, then MCP tools)."""

    def __init__(self, tools: Iterable[Tool] = (), limits: ToolLimits | None = None) -> None:
        self.limits = limits or ToolLimits()
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, Validator] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        """Add a tool; a duplicate name or an invalid schema raises ``ValueError``."""
        spec = tool.spec
        if spec.name in self._tools:
            raise ValueError(f"a tool named {spec.name!r} is already registered")
        self._validators[spec.name] = compile_validator(spec)
        self._tools[spec.name] = tool

    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> list[ToolSpec]:
        return [tool.spec for tool in self._tools.values()]

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def select(self, names: Sequence[str] | None) -> ToolSelection:
        """The tools a request asked for (``user_settings.text.tools``), in its order, duplicates dropped.

        Any name this server does not offer fails the whole request with ``unknown_tool``: silently
        dropping it would leave the model without a tool the user believes it has.
        """
        wanted = list(dict.fromkeys(names or ()))
        unknown = [name for name in wanted if name not in self._tools]
        if unknown:
            listed = ", ".join(repr(name) for name in unknown)
            available = ", ".join(self._tools) or "none"
            raise ValidationFailed(
                f"Unknown tool{'s' if len(unknown) > 1 else ''} {listed}. Available tools: {available}.",
                code="unknown_tool",
            )
        return ToolSelection(self, tuple(self._tools[name].spec for name in wanted))

    async def run(
        self,
        call: ToolCall,
        context: ToolContext,
        *,
        limits: ToolLimits | None = None,
        allowed: Collection[str] | None = None,
    ) -> ToolResult:
        """Run one call to completion; every failure is an ``is_error`` result, never an exception.

        ``allowed`` restricts the call to a request's selected tools. Cancelling the awaiting task cancels
        the tool at once and propagates ``CancelledError``, as cancellation must.
        """
        limits = limits or self.limits
        result = await self._run(call, context, limits, allowed)
        return ToolResult(
            call.call_id, truncate(result.output, limits.max_output_chars), result.is_error, result.code
        )

    async def run_all(
        self,
        calls: Sequence[ToolCall],
        context: ToolContext,
        *,
        limits: ToolLimits | None = None,
        allowed: Collection[str] | None = None,
    ) -> list[ToolResult]:
        """Run independent calls concurrently; results come back in the calls' order.

        The task group owns every call's task: cancelling the caller cancels and awaits them all.
        """
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self.run(call, context, limits=limits, allowed=allowed)) for call in calls
            ]
        return [task.result() for task in tasks]

    async def _run(
        self, call: ToolCall, context: ToolContext, limits: ToolLimits, allowed: Collection[str] | None
    ) -> ToolResult:
        tool = self._tools.get(call.name)
        if tool is None or (allowed is not None and call.name not in allowed):
            why = "is not enabled for this request" if tool else "does not exist"
            return _error(call, f"Tool {call.name!r} {why}.", "unknown_tool")
        try:
            arguments = self._checked_arguments(call)
        except ToolError as exc:
            return _error(call, exc.message, exc.code)
        try:
            async with asyncio.timeout(limits.timeout_s) as deadline:
                output = await tool.run(arguments, context)
        except TimeoutError as exc:
            if deadline.expired():
                return _error(
                    call, f"Tool {call.name!r} timed out after {limits.timeout_s:g} s.", "tool_timeout"
                )
            return _failure(call, exc)  # the tool's own timeout, not ours
        except ToolError as exc:
            return _error(call, exc.message or f"Tool {call.name!r} failed.", exc.code)
        except ParleyError as exc:  # its message is written to be shown (no SQL, no secrets)
            return _error(call, f"Tool {call.name!r} failed: {exc.message}", exc.code)
        except asyncio.CancelledError as exc:
            if _being_cancelled():
                raise
            return _failure(call, exc)  # a stray cancel from inside the tool, not the caller's
        except Exception as exc:
            return _failure(call, exc)
        if not isinstance(output, str):
            log.error("tool %s returned %s instead of text", call.name, type(output).__name__)
            return _error(call, f"Tool {call.name!r} failed: it returned no text.", "tool_failed")
        return ToolResult(call.call_id, output)

    def _checked_arguments(self, call: ToolCall) -> dict[str, Any]:
        """The call's arguments as a JSON object valid for the tool's schema, else ``ToolError``."""
        arguments = _decoded(call)
        error = best_match(self._validators[call.name].iter_errors(arguments))
        if error is None:
            return arguments
        where = "/".join(str(part) for part in error.absolute_path)
        detail = f"{where}: {error.message}" if where else error.message
        raise ToolError(
            f"Invalid arguments for tool {call.name!r}: {_clip(detail)}", code="invalid_arguments"
        )


@dataclass(frozen=True)
class ToolSelection:
    """The tools one request selected: their specs for the provider, and runs limited to them."""

    registry: ToolRegistry
    specs: tuple[ToolSpec, ...]

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    def __bool__(self) -> bool:
        return bool(self.specs)

    async def run(
        self, call: ToolCall, context: ToolContext, *, limits: ToolLimits | None = None
    ) -> ToolResult:
        return await self.registry.run(call, context, limits=limits, allowed=self.names)

    async def run_all(
        self, calls: Sequence[ToolCall], context: ToolContext, *, limits: ToolLimits | None = None
    ) -> list[ToolResult]:
        return await self.registry.run_all(calls, context, limits=limits, allowed=self.names)


def _decoded(call: ToolCall) -> dict[str, Any]:
    raw = call.arguments
    if isinstance(raw, str):
        if not raw.strip():
            return {}  # providers stream "" for a call without arguments
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ToolError(
                f"Invalid arguments for tool {call.name!r}: not JSON ({exc.msg} at character {exc.pos}).",
                code="invalid_arguments",
            ) from None
    if not isinstance(raw, Mapping):
        raise ToolError(
            f"Invalid arguments for tool {call.name!r}: expected a JSON object, got {type(raw).__name__}.",
            code="invalid_arguments",
        )
    return dict(raw)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_DETAIL_CHARS else text[: MAX_ERROR_DETAIL_CHARS - 1] + "…"


def _error(call: ToolCall, message: str, code: str) -> ToolResult:
    return ToolResult(call.call_id, message, is_error=True, code=code)


def _failure(call: ToolCall, exc: BaseException) -> ToolResult:
    """An unexpected exception: logged with its traceback, shown to the model only as its type."""
    log.error("tool %s failed (call %s)", call.name, call.call_id, exc_info=exc)
    return _error(call, f"Tool {call.name!r} failed unexpectedly ({type(exc).__name__}).", "tool_failed")
