"""The built-in offline model: a deterministic answer streamed in pieces, with knobs for testing.

With tools offered, options script tool calls so a whole agentic turn runs offline: step k of a turn (k
counted from the last user message by the assistant steps that made calls) makes the calls scripted for
it; once the script is used up, the model answers with the tool results it was shown. See docs/providers.md.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from parley.errors import ProviderFailed, ValidationFailed
from parley.providers.base import (
    ChatMessage,
    Provider,
    ProviderEvent,
    ProviderRequest,
    ReasoningDelta,
    StepEnd,
    TextDelta,
    ToolCallReady,
    ToolCallStarted,
    Usage,
    decode_arguments,
)
from parley.tools.base import TOOL_NAME, ToolCall

MAX_CHUNKS = 1_000_000
MAX_DELAY_MS = 60_000
MAX_TOOL_STEPS = 100
MAX_CALLS_PER_STEP = 32

# option name -> (whole numbers only, minimum, maximum)
_NUMBERS: dict[str, tuple[bool, float, float]] = {
    "chunks": (True, 1, MAX_CHUNKS),
    "delay_ms": (False, 0, MAX_DELAY_MS),
    "fail_after": (True, 0, MAX_CHUNKS),
}
_CALL_KEYS = {"name", "arguments"}
_CALL_SHAPE = '{"name": "<tool>", "arguments": {...}}'


@dataclass(frozen=True)
class ScriptedCall:
    """A call the demo model makes: ``arguments`` a JSON object, or text passed on as the model's raw JSON."""

    name: str
    arguments: Mapping[str, Any] | str


def default_answer(prompt: str) -> str:
    quoted = " ".join(prompt.split())[:200]
    return (
        f'Hello! This is Parley\'s offline demo model. You said: "{quoted}". '
        "I stream this answer in small pieces so you can watch it arrive."
    )


def split_answer(text: str, chunks: int | None) -> list[str]:
    """Word-sized deltas by default; else exactly ``chunks`` near-equal ones (short text is repeated)."""
    return list(answer_pieces(text, chunks))


def answer_pieces(text: str, chunks: int | None) -> Iterator[str]:
    """``split_answer``, one piece at a time, in memory that does not grow with ``chunks``: a text shorter
    than ``chunks`` is doubled (``f"{text} {text}"``) until it is long enough, here only virtually, as
    ``text + " "`` repeated ``copies`` times less the last space."""
    if chunks is None:
        words = text.split(" ")
        yield from (w + " " for w in words[:-1])
        if words[-1]:
            yield words[-1]
        return
    copies = 1
    while copies * (len(text) + 1) - 1 < chunks:
        copies *= 2
    unit = text + " "
    total = copies * len(unit) - 1
    size, extra = divmod(total, chunks)
    start = 0
    for i in range(chunks):
        end = start + size + (1 if i < extra else 0)
        yield _cut(unit, start, end)
        start = end


def _cut(unit: str, start: int, end: int) -> str:
    """``(unit * copies)[start:end]`` without the repeated text."""
    first, offset = divmod(start, len(unit))
    if end - first * len(unit) <= len(unit):
        return unit[offset : end - first * len(unit)]
    whole, tail = divmod(end - (first + 1) * len(unit), len(unit))
    return unit[offset:] + unit * whole + unit[:tail]


def approx_tokens(text: str) -> int:
    return max(1, len(text.split()))


# --- the tool script -----------------------------------------------------------------------------------


def tool_script(options: Mapping[str, Any]) -> list[list[ScriptedCall]]:
    """The scripted tool steps (``tool_calls`` is one step, ``tool_steps`` several); [] for none.

    Raises ``ValidationFailed`` naming the first bad option, so a mistyped script fails the request
    instead of silently answering without tools.
    """
    if "tool_calls" in options and "tool_steps" in options:
        raise ValidationFailed("options.tool_calls and options.tool_steps cannot be combined; use one.")
    if "tool_calls" in options:
        steps = [_step(options["tool_calls"], "options.tool_calls")]
    elif "tool_steps" in options:
        raw = options["tool_steps"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TOOL_STEPS:
            raise ValidationFailed(
                f"options.tool_steps must be a list of 1 to {MAX_TOOL_STEPS} steps, each a list of calls "
                f"{_CALL_SHAPE}."
            )
        steps = [_step(step, f"options.tool_steps[{k}]") for k, step in enumerate(raw)]
    else:
        steps = []
    repeat = options.get("repeat_tool_calls", False)
    if not isinstance(repeat, bool):
        raise ValidationFailed("options.repeat_tool_calls must be true or false.")
    if repeat and not steps:
        raise ValidationFailed("options.repeat_tool_calls needs options.tool_calls or options.tool_steps.")
    if not isinstance(options.get("tool_text", ""), str):
        raise ValidationFailed("options.tool_text must be a string.")
    return steps


def _step(raw: object, where: str) -> list[ScriptedCall]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CALLS_PER_STEP:
        raise ValidationFailed(f"{where} must be a list of 1 to {MAX_CALLS_PER_STEP} calls {_CALL_SHAPE}.")
    return [_call(call, f"{where}[{i}]") for i, call in enumerate(raw)]


def _call(raw: object, where: str) -> ScriptedCall:
    if not isinstance(raw, dict):
        raise ValidationFailed(f"{where} must be an object {_CALL_SHAPE}.")
    if unknown := sorted(set(raw) - _CALL_KEYS):
        raise ValidationFailed(f"{where} has unknown keys {unknown}; a call takes only name and arguments.")
    name = raw.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise ValidationFailed(f"{where}.name must be a tool name: 1 to 64 letters, digits, _ or -.")
    arguments = raw.get("arguments", {})
    if not isinstance(arguments, dict | str):
        raise ValidationFailed(
            f"{where}.arguments must be a JSON object, or a string sent as the model's raw JSON text."
        )
    return ScriptedCall(name, arguments)


def _this_turn(messages: Sequence[ChatMessage]) -> Sequence[ChatMessage]:
    """The messages after the last user message: the steps of the turn so far."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    return messages[last_user + 1 :]


def _calls_for_step(options: Mapping[str, Any], turn: Sequence[ChatMessage]) -> list[ScriptedCall]:
    """The calls of this step: the script's next step, else its last one again if it repeats, else none."""
    script = tool_script(options)
    step = sum(1 for m in turn if m.role == "assistant" and m.tool_calls)
    if step < len(script):
        return script[step]
    return script[-1] if script and options.get("repeat_tool_calls") else []


def tool_results_answer(turn: Sequence[ChatMessage]) -> str | None:
    """What the model says after tools ran: every result it was shown, named by tool; None if none."""
    names = {call.call_id: call.name for m in turn for call in m.tool_calls}
    results = [
        f"{names.get(m.tool_call_id or '', 'tool')}{' (error)' if m.is_error else ''}: {m.content}"
        for m in turn
        if m.role == "tool"
    ]
    return f"Tool results: {'; '.join(results)}" if results else None


class DemoProvider(Provider):
    """Options: ``chunks``, ``delay_ms``, ``text``, ``reasoning``, ``fail_after``, ``escapes`` (see
    docs/protocol.md);
    with tools: ``tool_calls``, ``tool_steps``, ``repeat_tool_calls``, ``tool_text`` (docs/providers.md)."""

    name = "demo"
    needs_key = False
    supports_tools = True

    def check_options(self, options: Mapping[str, Any]) -> None:
        for key, (whole, low, high) in _NUMBERS.items():
            value = options.get(key)
            if value is None:
                continue
            number = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
            if not number or not low <= value <= high:
                raise ValidationFailed(f"options.{key} must be a number from {low:g} to {high:g}.")
        for key in ("text", "reasoning"):
            if key in options and not isinstance(options[key], str):
                raise ValidationFailed(f"options.{key} must be a string.")
        if options.get("text") == "":
            raise ValidationFailed("options.text must not be empty.")
        if not isinstance(options.get("escapes", False), bool):
            raise ValidationFailed("options.escapes must be true or false.")
        tool_script(options)

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        options = request.options
        turn = _this_turn(request.messages)
        offered = request.tools and request.tool_choice != "none"  # "none": a last step must answer
        calls = _calls_for_step(options, turn) if offered else []
        delay = float(options.get("delay_ms") or 0) / 1000
        yield Usage(input_tokens=sum(approx_tokens(m.content) for m in request.messages))
        if reasoning := options.get("reasoning"):
            for piece in answer_pieces(_unescaped(reasoning, options), None):
                await asyncio.sleep(delay)
                yield ReasoningDelta(piece)
        if calls:
            text = options.get("tool_text") or ""
        else:
            prompt = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
            text = options.get("text") or tool_results_answer(turn) or default_answer(prompt)
        text = _unescaped(text, options)
        fail_after: int | None = options.get("fail_after")
        sent = 0
        for piece in answer_pieces(text, options.get("chunks")) if text else ():
            if fail_after is not None and sent >= fail_after:
                raise ProviderFailed(f"The demo model failed after {sent} deltas, as asked (fail_after).")
            await asyncio.sleep(delay)
            yield TextDelta(piece)
            sent += 1
        made: list[ToolCall] = []
        for scripted in calls:
            call = ToolCall(f"call_demo_{uuid.uuid4().hex[:16]}", scripted.name, _arguments(scripted))
            await asyncio.sleep(delay)
            yield ToolCallStarted(call.call_id, call.name)
            await asyncio.sleep(delay)
            yield ToolCallReady(call)
            made.append(call)
        yield Usage(output_tokens=sent + len(made))
        if request.tools:
            message = ChatMessage("assistant", text, tool_calls=tuple(made))
            yield StepEnd("tool_use" if made else "end", message)


_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def _unescaped(text: str, options: Mapping[str, Any]) -> str:
    """With ``escapes``, ``\\uXXXX`` in the text becomes that code point, lone surrogates included: what a
    real model's stream can carry, and a client frame cannot (parley/text.py refuses it)."""
    if not options.get("escapes"):
        return text
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def _arguments(call: ScriptedCall) -> Mapping[str, Any] | str:
    """Scripted text is decoded as a real model's would be: to an object when it is one, else kept raw."""
    return decode_arguments(call.arguments) if isinstance(call.arguments, str) else dict(call.arguments)
