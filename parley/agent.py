"""Agentic turns: the tool loop a turn runs when its request selects tools; its steps stored and replayed.

A tool-using turn is a series of *steps*, one model call each. The model streams text and asks for tool
calls; Parley runs the step's calls concurrently, shows the model their results and calls it again, until a
step makes no calls (the final answer) or the turn has used its steps (``tool_step_limit``). On the wire a
call is one ``toolUse`` as soon as the model has written it whole, then one ``toolResult`` when it has run;
text streams as in any turn, so the client sees each step's text between the tool events.

Storage keeps one answer row per turn. Its ``content`` is every text delta sent, in order (invariant 11);
``tool_steps`` holds the steps that made calls, oldest first::

    [{"text": "<the step's text>",
      "calls": [{"id": "<call id>", "name": "<tool>", "input": {...}}],
      "results": [{"call_id": "<call id>", "output": "<text>", "is_error": false}]}]

The steps' texts are the start of ``content``; the rest of it is the final answer's text. Every stored call
has a result: one that never ran (the turn was cancelled, the model failed, the step limit was reached) gets
an ``is_error`` result saying so, and the client got the same ``toolResult``. So the history is always a
valid conversation for every vendor, and every ``toolUse`` of a turn has exactly one ``toolResult``.

The next turn's context replays a stored answer in the vendor's own shape (the assistant message with its
calls, one tool message per result, …, then the final text) when that request selects tools, and as plain
text when it selects none: Anthropic refuses ``tool_use`` blocks in a request that defines no tools.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from parley.errors import DatabaseFailed, LimitExceeded
from parley.providers.base import ChatMessage, ProviderRequest, StepEnd, arguments_json
from parley.step import Streamer
from parley.text import clean, clean_json
from parley.tools import ToolCall, ToolContext, ToolResult, ToolSelection

if TYPE_CHECKING:
    from parley.store.branches import ContextMessage
    from parley.store.repository import Store

log = logging.getLogger("parley.turn")

STEP_LIMIT_CODE = "tool_step_limit"
CANCELLED_OUTPUT = "Cancelled: the turn was stopped before this call finished."
NOT_RUN_OUTPUT = "Not run: the model's answer failed before the call could run."
MISSING_OUTPUT = "No result was recorded for this call."


def call_input(call: ToolCall) -> dict[str, Any] | str:
    """A call's arguments as shown and stored: the JSON object, or the model's raw text when it is none."""
    return call.arguments if isinstance(call.arguments, str) else dict(call.arguments)


# -- steps --------------------------------------------------------------------------------------------


@dataclass
class ToolStep:
    """One model step that made tool calls: its text, its calls and, position for position, their results."""

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    results: list[ToolResult | None] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "calls": [{"id": c.call_id, "name": c.name, "input": call_input(c)} for c in self.calls],
            "results": [
                {"call_id": r.call_id, "output": r.output, "is_error": r.is_error}
                for r in self.results
                if r is not None
            ],
        }

    def messages(self) -> list[ChatMessage]:
        """The step as the model saw it: its assistant message with the calls, then one result each."""
        results = [
            r or ToolResult(c.call_id, MISSING_OUTPUT, True)
            for c, r in zip(self.calls, self.results, strict=True)
        ]
        return [
            ChatMessage("assistant", self.text, tool_calls=tuple(self.calls)),
            *(ChatMessage.tool_result(result) for result in results),
        ]


def stored_steps(value: object) -> list[ToolStep]:
    """Steps from the stored JSON; anything malformed is skipped, and a call without a result gets one."""
    if not isinstance(value, list):
        return []
    steps: list[ToolStep] = []
    for item in value:
        if not isinstance(item, dict):
            continue
        calls = [_stored_call(c) for c in item.get("calls") or [] if isinstance(c, dict)]
        if not calls:
            continue
        results = [r for r in item.get("results") or [] if isinstance(r, dict)]
        by_id = {str(r.get("call_id")): r for r in results}
        matched: list[ToolResult | None] = []
        for i, call in enumerate(calls):
            found = results[i] if i < len(results) and results[i].get("call_id") == call.call_id else None
            found = found or by_id.get(call.call_id)
            if found is None:
                matched.append(ToolResult(call.call_id, MISSING_OUTPUT, True))
            else:
                output = found.get("output")
                matched.append(
                    ToolResult(
                        call.call_id, output if isinstance(output, str) else "", found.get("is_error") is True
                    )
                )
        text = item.get("text")
        steps.append(ToolStep(text if isinstance(text, str) else "", calls, matched))
    return steps


def _stored_call(data: dict[str, Any]) -> ToolCall:
    arguments = data.get("input")
    return ToolCall(
        str(data.get("id") or ""),
        str(data.get("name") or ""),
        arguments if isinstance(arguments, dict | str) else {},
    )


# -- the next turn's context ----------------------------------------------------------------------------


def history_messages(history: Iterable[ContextMessage], structured: bool) -> list[ChatMessage]:
    """Stored messages as the model's history. An agentic answer becomes its steps then its final text
    (``structured``, for a request with tools), or one plain-text message that tells what was called."""
    messages: list[ChatMessage] = []
    for m in history:
        if m.tool_steps is None:
            messages.append(ChatMessage(m.role, m.content))
        else:
            messages += answer_messages(m.content, stored_steps(m.tool_steps), structured)
    return messages


def answer_messages(content: str, steps: Sequence[ToolStep], structured: bool) -> list[ChatMessage]:
    """One stored answer with tool steps as context messages (see ``history_messages``)."""
    final = final_text(content, steps)
    if not structured:
        return [ChatMessage("assistant", flattened(steps, final))]
    messages = [message for step in steps for message in step.messages()]
    if final:
        messages.append(ChatMessage("assistant", final))
    return messages


def final_text(content: str, steps: Sequence[ToolStep]) -> str:
    """The text after the steps' texts: the final answer. None when the content lags behind the steps (a
    server stopped between two checkpoints); all of it when it does not start with them (an import)."""
    prefix = "".join(step.text for step in steps)
    if content.startswith(prefix):
        return content[len(prefix) :]
    return "" if prefix.startswith(content) else content


def flattened(steps: Sequence[ToolStep], final: str) -> str:
    """The whole exchange as plain text, for a model that is not offered tools this time."""
    parts: list[str] = []
    for step in steps:
        if step.text:
            parts.append(step.text)
        for call, result in zip(step.calls, step.results, strict=True):
            parts.append(f"[Called tool {call.name} with {arguments_json(call)}]")
            if result is not None:
                parts.append(f"[{'Tool error' if result.is_error else 'Tool result'}: {result.output}]")
    if final:
        parts.append(final)
    return "\n".join(parts)


# -- the loop -------------------------------------------------------------------------------------------


@dataclass
class ToolLoop:
    """One agentic turn's steps: stream, announce and run the calls, feed the results back, repeat.

    ``run`` runs in the turn's task: cancelling it cancels the step's tool calls at once. A cancel from the
    client first ``abandon``s the open calls (each gets its ``Cancelled`` result, before ``cancelled``).
    Steps are saved (content, reasoning and steps so far) after each completed step, in the background;
    ``settle`` waits for those writes, so the turn's final write comes after them.
    """

    streamer: Streamer
    selection: ToolSelection
    context: ToolContext
    max_steps: int
    store: Store
    message_id: uuid.UUID
    seq: Callable[[], int]  # the turn's last event so far, saved with each step checkpoint
    steps: list[ToolStep] = field(default_factory=list, init=False)
    _current: ToolStep | None = field(default=None, init=False)
    _writes: list[asyncio.Task[None]] = field(default_factory=list, init=False)

    def stored(self) -> list[dict[str, Any]] | None:
        """The steps as stored, or None when the model called no tool."""
        return [step.to_json() for step in self.steps] if self.steps else None

    async def run(self, request: ProviderRequest) -> None:
        try:
            await self._steps(request)
        except asyncio.CancelledError:
            self.abandon(CANCELLED_OUTPUT, "cancelled")
            raise
        except BaseException:
            self.abandon(NOT_RUN_OUTPUT, "not_run")
            raise

    async def settle(self) -> None:
        """Wait for the step checkpoints still being written (each logs its own failure)."""
        if self._writes:
            await asyncio.gather(*self._writes)

    def abandon(self, output: str, code: str) -> None:
        """The step in progress ends without running (all of) its calls: each open one gets an error
        result."""
        step, self._current = self._current, None
        if step is None:
            return
        for index, call in enumerate(step.calls):
            if step.results[index] is None:
                step.results[index] = ToolResult(call.call_id, output, is_error=True, code=code)
                self.streamer.events.tool_result(call.call_id, output, True)

    async def _steps(self, request: ProviderRequest) -> None:
        messages = list(request.messages)
        events = self.streamer.events
        for number in range(1, self.max_steps + 1):
            step = self._current = ToolStep()
            end = await self._stream(replace(request, messages=messages), step)
            if events.cut:  # cancelled, and the provider swallowed the cancellation: stop here
                raise asyncio.CancelledError
            for call in end.tool_calls if end is not None else ():
                if all(call.call_id != made.call_id for made in step.calls):
                    self._announce(step, call)  # a call the stream did not report ready: never seen so far
            if not step.calls:
                self._current = None
                return  # the final answer
            if number == self.max_steps:
                limit = f"Not run: the turn reached its limit of {self.max_steps} model steps."
                self.abandon(limit, STEP_LIMIT_CODE)
                raise LimitExceeded(
                    f"The model still wanted tools after {self.max_steps} steps, the most one turn may take.",
                    code=STEP_LIMIT_CODE,
                )
            await self._run_calls(step)
            self._current = None
            said = end.message if end is not None else ChatMessage("assistant", step.text)
            messages.append(replace(said, tool_calls=tuple(step.calls)))
            messages += [ChatMessage.tool_result(r) for r in step.results if r is not None]
            self._checkpoint()

    async def _stream(self, request: ProviderRequest, step: ToolStep) -> StepEnd | None:
        """Stream one step; each call is announced once the model has written it whole."""
        answer = self.streamer.answer
        start = len(answer.text)
        try:
            return await self.streamer.step(request, lambda call: self._announce(step, call))
        finally:
            step.text = "".join(answer.text[start:])

    def _announce(self, step: ToolStep, call: ToolCall) -> None:
        """Record a call of this step and send its ``toolUse``."""
        call = ToolCall(clean(call.call_id), clean(call.name), clean_json(call.arguments))
        if not step.calls:
            self.steps.append(step)
        step.calls.append(call)
        step.results.append(None)
        self.streamer.events.tool_use(call.call_id, call.name, call_input(call))

    async def _run_calls(self, step: ToolStep) -> None:
        """Run the step's calls at once; each ``toolResult`` goes out as soon as its call is done."""

        async def run(index: int, call: ToolCall) -> None:
            result = await self.selection.run(call, self.context)
            if step.results[index] is not None:  # abandoned meanwhile (a cancel): that result stands
                return
            result = ToolResult(call.call_id, clean(result.output), result.is_error, result.code)
            step.results[index] = result
            self.streamer.events.tool_result(call.call_id, result.output, result.is_error)

        if len(step.calls) == 1:
            await run(0, step.calls[0])
            return
        async with asyncio.TaskGroup() as group:  # cancelling the turn cancels (and awaits) every call
            for index, call in enumerate(step.calls):
                group.create_task(run(index, call))

    def _checkpoint(self) -> None:
        answer = self.streamer.answer
        self._writes = [task for task in self._writes if not task.done()]
        save = self._save(answer.content, answer.reasoning_text, self.stored(), self.seq())
        self._writes.append(asyncio.get_running_loop().create_task(save))

    async def _save(
        self, content: str, reasoning: str | None, steps: list[dict[str, Any]] | None, seq: int
    ) -> None:
        try:
            await self.store.checkpoint(self.message_id, content, reasoning, seq, steps)
        except DatabaseFailed:
            log.warning("checkpoint of message %s failed; the final write will retry", self.message_id)


def step_limit(requested: int | None, server_limit: int) -> int:
    """The steps a turn may take: the request's ``max_steps``, capped by the server's limit."""
    return min(requested or server_limit, server_limit)
