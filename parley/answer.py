"""The answer as it streams: what was sent (exactly the deltas, invariant 11), how text deltas are sent,
and the checkpoints that save it every few seconds (``PARLEY_CHECKPOINT_INTERVAL_S``) — never per token."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from parley.errors import DatabaseFailed
from parley.providers.base import Usage
from parley.store.repository import Store

log = logging.getLogger("parley.turn")

# Sends one delta; returns it as sent (NUL and lone surrogates replaced), or None when nothing was sent.
Emit = Callable[[str], str | None]


@dataclass
class Answer:
    """The answer as streamed so far; ``text`` is exactly the deltas sent (invariant 11)."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    version: int = 0
    _before_step: dict[str, int] = field(default_factory=dict)  # earlier steps' tokens (agentic turns)

    @property
    def content(self) -> str:
        return "".join(self.text)

    @property
    def reasoning_text(self) -> str | None:
        return "".join(self.reasoning) if self.reasoning else None

    def begin_step(self) -> None:
        """A new model call starts: its usage adds to the steps' before it."""
        self._before_step = dict(self.usage)

    def add_usage(self, usage: Usage) -> None:
        """The step's token counts so far (a later one replaces the fields it sets)."""
        before = self._before_step
        if usage.input_tokens is not None:
            self.usage["input_tokens"] = before.get("input_tokens", 0) + usage.input_tokens
        if usage.output_tokens is not None:
            self.usage["output_tokens"] = before.get("output_tokens", 0) + usage.output_tokens


class TextSender:
    """Sends text deltas, recording each in the answer. With a window, deltas that arrive within it of the
    last send are merged into one event; a delta after a quiet spell (and so the first) goes at once."""

    def __init__(self, emit: Emit, answer: Answer, window_s: float, reasoning: Emit | None = None) -> None:
        self._emit = emit
        self._emit_reasoning = reasoning
        self._answer = answer
        self._window = window_s
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._last_sent = -window_s
        self._closed = False

    def close(self) -> None:
        """Send what is pending, then nothing more: what was sent is the answer (a cancel's cut)."""
        self.flush()
        self._closed = True

    def add(self, text: str) -> None:
        if self._closed:
            return
        if self._window <= 0:  # ``_send``, inlined: this is once per delta
            sent = self._emit(text)
            if sent is not None:
                answer = self._answer
                answer.text.append(sent)
                answer.version += 1
            return
        now = asyncio.get_running_loop().time()
        if self._timer is None and now - self._last_sent >= self._window:
            self._send(text)
            self._last_sent = now
            return
        self._pending.append(text)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(self._last_sent + self._window, self.flush)

    def reasoning(self, text: str) -> None:
        """A reasoning delta: the text held back goes first, then it, recorded in the answer."""
        if self._closed or self._emit_reasoning is None:
            return
        self.flush()
        sent = self._emit_reasoning(text)
        if sent is not None:
            self._answer.reasoning.append(sent)
            self._answer.version += 1

    def flush(self) -> None:
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            self._send("".join(self._pending))
            self._pending.clear()
            self._last_sent = asyncio.get_running_loop().time()

    def _send(self, text: str) -> None:
        sent = self._emit(text)  # as sent (parley/text.py): what is stored must equal what was sent
        if sent is not None:
            self._answer.text.append(sent)
            self._answer.version += 1


class Checkpointer:
    """Writes the answer so far about once per interval while it streams; never per token.

    A timer, not a task: a short turn ends before the first tick and costs nothing but the timer.
    """

    def __init__(
        self,
        store: Store,
        message_id: uuid.UUID,
        answer: Answer,
        interval_s: float,
        seq: Callable[[], int],
    ) -> None:
        self._store = store
        self._message_id = message_id
        self._answer = answer
        self._seq = seq  # the turn's last event so far: what the saved content reflects
        self._interval = interval_s
        self._written = 0
        self._write: asyncio.Task[None] | None = None  # owned: ``stop`` awaits it
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            interval_s, self._tick
        )

    async def stop(self) -> None:
        """Let a write in flight finish (never cancel mid-write), then end."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._write is not None:
            await self._write

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._interval, self._tick)
        if self._write is None and self._answer.version != self._written:
            self._written = self._answer.version
            answer = self._answer
            self._write = loop.create_task(self._save(answer.content, answer.reasoning_text, self._seq()))

    async def _save(self, content: str, reasoning: str | None, seq: int) -> None:
        try:
            await self._store.checkpoint(self._message_id, content, reasoning, seq)
        except DatabaseFailed:
            log.warning("checkpoint of message %s failed; the final write will retry", self._message_id)
        finally:
            self._write = None
