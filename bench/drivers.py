"""Per-connection turn drivers and the recorder they report to. Everything here runs inside the generator.

A ``StreamDriver`` sends a chat request, reads the turn's events as they arrive (synchronously, from the
socket's ``data_received``), records timings, and sends the next request as soon as ``fullProcessComplete``
arrives, until the measuring window is over. Some turns are cancelled at a random delta when asked.

Deltas are the model's deltas, not ``text`` events: every delta of the demo model (and of the floor) has
``delta_chars`` characters, and a server that coalesces sends several of them whole in one event, so a turn's
deltas so far are the text characters it has received ÷ ``delta_chars``. A ``text`` event carrying k merged
deltas counts k; without coalescing every event carries one, and deltas = events. ``text`` events are
counted too (``frames``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.frames import chat_request, new_request_id
from bench.metrics import summary
from bench.wsclient import Payload, WsClient

MAX_ERROR_SAMPLES = 12


@dataclass
class Window:
    """The measuring window (``start``, ``end``: set as it opens and closes); turns end at ``planned_end``."""

    planned_end: float = math.inf
    start: float = math.inf
    end: float = math.inf

    def inside(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True)
class TurnLoad:
    """What each turn asks for."""

    chunks: int
    delta_chars: int
    delay_ms: float = 0.0
    turns_per_session: int = 0  # continue a session for this many turns; 0: every turn starts one
    cancel_fraction: float = 0.0
    max_turns: int = 0  # per connection; 0: until the window ends


@dataclass(slots=True)
class TurnState:
    request_id: str
    sent: float
    cancel_at: int | None
    working: float | None = None
    first: float | None = None
    last: float = 0.0
    deltas: int = 0  # the model's deltas received: chars // delta_chars
    chars: int = 0  # text characters received
    frames: int = 0  # text events received
    events: int = 0
    size: int = 0
    cancel_sent: float | None = None
    cancelled: float | None = None
    in_flight: int = 0
    after: int = 0
    parts: list[str] | None = None


@dataclass
class CancelRecord:
    request_id: str
    text: str
    status: str
    latency_ms: float | None
    in_flight: int
    after: int
    measured: bool


@dataclass
class Recorder:
    """Counters and samples of one run. Samples are kept for turns sent (or events received) in the window."""

    window: Window = field(default_factory=Window)
    ttw_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    turn_ms: list[float] = field(default_factory=list)
    gaps_ms: array[float] = field(default_factory=lambda: array("d"))
    deltas: int = 0  # the model's deltas (text characters ÷ delta size)
    deltas_window: int = 0
    frames: int = 0  # text events, each carrying one delta or (coalesced) several
    frames_window: int = 0
    turns_started: int = 0
    completed_window: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    shapes: Counter[tuple[int, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    cancels: list[CancelRecord] = field(default_factory=list)

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{kind}: {detail}"[:300])

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def report(self) -> dict[str, Any]:
        shape = self.shapes.most_common(1)
        return {
            "deltas_total": self.deltas,
            "deltas_window": self.deltas_window,
            "frames_total": self.frames,
            "frames_window": self.frames_window,
            "completed_window": self.completed_window,
            "turns_started": self.turns_started,
            "statuses": dict(self.statuses),
            "ttw_ms": summary(self.ttw_ms),
            "ttft_ms": summary(self.ttft_ms),
            "turn_ms": summary(self.turn_ms),
            "gap_ms": summary(self.gaps_ms),
            "errors": dict(self.errors),
            "error_total": self.error_total,
            "error_samples": self.error_samples,
            "shape": {"events": shape[0][0][0], "bytes": shape[0][0][1]} if shape else None,
            "distinct_shapes": len(self.shapes),
        }

    def cancel_report(self) -> dict[str, Any]:
        measured = [c for c in self.cancels if c.measured]
        return {
            "sent": len(self.cancels),
            "measured": len(measured),
            "cancelled": sum(c.status == "cancelled" for c in self.cancels),
            "raced_completion": sum(c.status == "completed" for c in self.cancels),
            "latency_ms": summary(c.latency_ms for c in measured if c.latency_ms is not None),
            "in_flight": summary(float(c.in_flight) for c in measured),
            "after_cancelled": sum(c.after for c in self.cancels),
            "records": [
                {"request_id": c.request_id, "text": c.text, "status": c.status}
                for c in self.cancels
                if c.status == "cancelled"
            ],
        }


class StreamDriver:
    """Runs turns back to back on one connection and records what it sees."""

    def __init__(
        self,
        client: WsClient,
        load: TurnLoad,
        rec: Recorder,
        rng: random.Random,
        done: asyncio.Future[None],
    ) -> None:
        self.client = client
        self.load = load
        self.rec = rec
        self.rng = rng
        self.done = done
        self.control = client  # where this driver's cancels go: its own connection, or another's
        self.turn: TurnState | None = None
        self.turns = 0
        self.session_id = ""
        self.session_turns = 0
        self._last_session = ""
        client.sink = self.on_frame
        client.on_close = self.on_close

    # -- turns -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Send the next request, unless the window is over or the turn budget spent."""
        if self.done.done():
            return
        load = self.load
        if time.perf_counter() >= self.rec.window.planned_end or (
            load.max_turns and self.turns >= load.max_turns
        ):
            self.finish()
            return
        request_id = new_request_id()
        cancel_at = self._cancel_point()
        frame = chat_request(request_id, load.chunks, load.delta_chars, load.delay_ms, self.session_id)
        self.turn = TurnState(request_id, time.perf_counter(), cancel_at, parts=[] if cancel_at else None)
        self.rec.turns_started += 1
        self.client.send_text(orjson.dumps(frame))

    def _cancel_point(self) -> int | None:
        load = self.load
        if load.cancel_fraction <= 0 or self.rng.random() >= load.cancel_fraction:
            return None
        return self.rng.randint(1, max(1, load.chunks - 2))

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def time_out(self, now: float, limit_s: float) -> None:
        """Give up on a turn that has run too long: an error, and the connection is dropped."""
        if self.turn is not None and now - self.turn.sent > limit_s:
            self.rec.error("turn timed out", f"no fullProcessComplete after {limit_s:.0f}s")
            self.turn = None
            self.finish()
            self.client.abort()

    # -- events ------------------------------------------------------------------------------------

    def on_frame(self, data: Payload, now: float) -> None:
        turn = self.turn
        if turn is None:
            return  # websocketReady
        turn.events += 1
        turn.size += len(data)
        event = orjson.loads(data)
        kind = event.get("type")
        if kind == "text":
            self._text(turn, event, now)
        elif kind == "working":
            turn.working = now
        elif kind == "dbOperationExecuted":
            self._last_session = str(event.get("session_id") or "")
        elif kind == "fullProcessComplete":
            self._complete(turn, str(event.get("status")), now)
        elif kind == "cancelled":
            if turn.cancel_sent is None:
                self.rec.error("cancelled without a cancel", turn.request_id)
            turn.cancelled = now
        elif kind == "error":
            self.rec.error(f"error {event.get('stage')}/{event.get('code')}", str(event.get("content")))

    def _text(self, turn: TurnState, event: dict[str, Any], now: float) -> None:
        rec = self.rec
        inside = rec.window.start <= now < rec.window.end
        if turn.first is None:
            turn.first = now
        elif inside:
            rec.gaps_ms.append((now - turn.last) * 1000.0)
        turn.last = now
        content = event.get("content")
        text = content if isinstance(content, str) else ""
        delivered = deltas_in(turn.chars, len(text), self.load.delta_chars)
        turn.chars += len(text)
        turn.deltas += delivered
        turn.frames += 1
        rec.deltas += delivered
        rec.frames += 1
        if inside:
            rec.deltas_window += delivered
            rec.frames_window += 1
        if turn.parts is not None:
            self._cancel_track(turn, text, delivered)

    def _cancel_track(self, turn: TurnState, content: str, delivered: int) -> None:
        assert turn.parts is not None and turn.cancel_at is not None
        if turn.cancelled is not None:
            turn.after += max(1, delivered)  # a delta after `cancelled`: must never happen
            return
        turn.parts.append(content)
        if turn.cancel_sent is not None:
            turn.in_flight += delivered
        elif turn.deltas >= turn.cancel_at:
            turn.cancel_sent = time.perf_counter()
            self.control.send_text(orjson.dumps({"type": "cancel", "request_id": turn.request_id}))

    def _complete(self, turn: TurnState, status: str, now: float) -> None:
        rec = self.rec
        rec.statuses[status] += 1
        self.turn = None
        self.turns += 1
        if rec.window.inside(turn.sent):
            if turn.working is not None:
                rec.ttw_ms.append((turn.working - turn.sent) * 1000.0)
            if turn.first is not None:
                rec.ttft_ms.append((turn.first - turn.sent) * 1000.0)
            rec.turn_ms.append((now - turn.sent) * 1000.0)
        if status == "completed" and rec.window.inside(now):
            rec.completed_window += 1
        if status == "completed" and turn.cancel_sent is None:
            rec.shapes[(turn.events, turn.size)] += 1
        expected = self.load.chunks * self.load.delta_chars
        if status == "completed" and turn.chars != expected:  # the delta count would be off
            rec.error("answer of another length", f"{turn.chars} characters, not {expected}")
        if turn.cancel_sent is not None:
            self._cancel_done(turn, status)
        self._next_session()
        self.start()

    def _cancel_done(self, turn: TurnState, status: str) -> None:
        latency = None
        if turn.cancel_sent is not None and turn.cancelled is not None:
            latency = (turn.cancelled - turn.cancel_sent) * 1000.0
        measured = turn.cancel_sent is not None and self.rec.window.inside(turn.cancel_sent)
        text = "".join(turn.parts or [])
        self.rec.cancels.append(
            CancelRecord(turn.request_id, text, status, latency, turn.in_flight, turn.after, measured)
        )

    def _next_session(self) -> None:
        per = self.load.turns_per_session
        self.session_turns += 1
        if per <= 0 or self.session_turns >= per or not self._last_session:
            self.session_id, self.session_turns = "", 0
        else:
            self.session_id = self._last_session
        self._last_session = ""

    def on_close(self) -> None:
        if self.done.done():
            return
        self.rec.error("connection closed mid-turn" if self.turn is not None else "connection closed")
        self.turn = None
        self.finish()


def deltas_in(chars_before: int, chars: int, delta_chars: int) -> int:
    """Deltas completed by ``chars`` more characters of a turn that had ``chars_before``: exactly k for an
    event of k whole deltas; a delta split across events would count once, with its last character."""
    size = max(1, delta_chars)
    return (chars_before + chars) // size - chars_before // size
