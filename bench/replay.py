"""What the `resume` scenario's generator reads: a turn on its own connection, resumes of it on others, and
what a turn's log accounts for it. Everything here runs inside the generator; the pure functions
(``event_body``, ``turn_log_bytes``, ``live_rate``) are tested without a server.

Parley's turn events are encoded ``{"type":…,"request_id":…[,"session_id":…],"seq":N,<body>}``: the log keeps
the kind and the *body* (the fields after ``seq``) and splices the head on per follower
(parley/protocol.py, ``FrameEncoder``). So the bodies of the frames received are exactly what the log keeps
for that turn, and ``parley.streams.ended_log_bytes`` of them is what it counts for it once the turn ended
(``TurnStreams.total``): the log's own count, computed the same way, not an estimate.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.drivers import Recorder, StreamDriver
from bench.frames import chat_request, new_request_id
from bench.wsclient import Payload, WsClient
from parley.streams import ended_log_bytes

SEQ_MARK = b'"seq":'
TEXT_PREFIX = b'{"type":"text",'
COMPLETE_PREFIX = b'{"type":"fullProcessComplete",'
ERROR_PREFIX = b'{"type":"error",'
PONG_PREFIX = b'{"type":"pong",'


def event_body(frame: bytes) -> bytes | None:
    """The body a turn's log keeps for this frame: what follows ``"seq":N,`` up to the closing brace; None
    for a frame that is not a turn's event (no ``seq``)."""
    at = frame.find(SEQ_MARK)
    if at < 0 or not frame.endswith(b"}"):
        return None
    comma = frame.find(b",", at + len(SEQ_MARK))
    if comma < 0:
        return None
    return frame[comma + 1 : -1]


def turn_log_bytes(frames: list[bytes]) -> int:
    """What an ended turn's log counts for the events these frames (all of one turn, in order) carry."""
    bodies = [body.decode("utf-8", errors="replace") for f in frames if (body := event_body(f)) is not None]
    return ended_log_bytes(bodies)


def live_rate(texts: int, first: float | None, last: float) -> float:
    """Deltas per second of a live turn between its first and its last ``text`` (n texts, n - 1 gaps): the
    steady rate, without the turn's start. NaN with fewer than two texts."""
    if first is None or texts < 2 or last <= first:
        return math.nan
    return (texts - 1) / (last - first)


def is_turn_error(frame: bytes) -> bool:
    """An ``error`` that is not one of a turn's events (no seq): a refused ``resume``, for one."""
    return frame.startswith(ERROR_PREFIX) and SEQ_MARK not in frame


@dataclass
class LiveTurn:
    """One turn as the connection that sent it read it: every frame, and when."""

    request_id: str
    sent: float
    done: asyncio.Future[None]
    frames: list[bytes] = field(default_factory=list)
    texts: int = 0
    first_text: float | None = None
    last_text: float = 0.0
    ended: float | None = None
    status: str = ""

    @property
    def deltas_per_s(self) -> float:
        return live_rate(self.texts, self.first_text, self.last_text)

    @property
    def events_per_s(self) -> float:
        """Every event of the turn over the whole turn, request sent → last event."""
        if self.ended is None or self.ended <= self.sent:
            return math.nan
        return len(self.frames) / (self.ended - self.sent)


class TurnOwner:
    """The connection that runs the turns to be resumed: one turn at a time, every frame kept."""

    def __init__(self, client: WsClient, rec: Recorder, delta_chars: int) -> None:
        self.client = client
        self.rec = rec
        self.delta_chars = delta_chars
        self.turn: LiveTurn | None = None
        client.sink = self.on_frame

    def send(self, chunks: int, delay_ms: float) -> LiveTurn:
        request_id = new_request_id()
        turn = LiveTurn(request_id, time.perf_counter(), self.client.loop.create_future())
        self.turn = turn
        self.rec.turns_started += 1
        self.client.send_text(orjson.dumps(chat_request(request_id, chunks, self.delta_chars, delay_ms)))
        return turn

    def on_frame(self, data: Payload, now: float) -> None:
        turn = self.turn
        if turn is None:
            return
        frame = bytes(data)
        turn.frames.append(frame)
        if frame.startswith(TEXT_PREFIX):
            if turn.first_text is None:
                turn.first_text = now
            turn.last_text = now
            turn.texts += 1
            self.rec.deltas += 1
        elif frame.startswith(COMPLETE_PREFIX):
            turn.ended = now
            turn.status = str(orjson.loads(frame).get("status"))
            self.rec.statuses[turn.status] += 1
            self.turn = None
            if not turn.done.done():
                turn.done.set_result(None)
        elif frame.startswith(ERROR_PREFIX):
            event: dict[str, Any] = orjson.loads(frame)
            self.rec.error(f"error {event.get('stage')}/{event.get('code')}", str(event.get("content")))


class Replay:
    """One ``resume`` on a connection: when it was sent, its first frame, the frame that caught up with
    ``head`` (the last seq the turn's own connection had read when it was sent), and the last."""

    def __init__(self, client: WsClient, request_id: str, head: int) -> None:
        self.client = client
        self.request_id = request_id
        self.head = head
        self.frames: list[bytes] = []
        self.sent = 0.0
        self.first: float | None = None
        self.caught_up: float | None = None
        self.ended: float | None = None
        self.refused = ""
        self.done: asyncio.Future[None] = client.loop.create_future()
        client.sink = self.on_frame

    def send(self, after_seq: int = -1) -> None:
        frame = {"type": "resume", "request_id": self.request_id, "after_seq": after_seq}
        self.sent = time.perf_counter()
        self.client.send_text(orjson.dumps(frame))

    def on_frame(self, data: Payload, now: float) -> None:
        frame = bytes(data)
        if is_turn_error(frame):
            self.refused = str(orjson.loads(frame).get("code"))
            self._end(now)
            return
        self.frames.append(frame)
        if self.first is None:
            self.first = now
        if len(self.frames) - 1 == self.head:
            self.caught_up = now
        if frame.startswith(COMPLETE_PREFIX):
            self._end(now)

    def _end(self, now: float) -> None:
        self.ended = now
        if not self.done.done():
            self.done.set_result(None)

    @property
    def first_ms(self) -> float:
        return math.nan if self.first is None else (self.first - self.sent) * 1000.0

    @property
    def replay_ms(self) -> float:
        """``resume`` sent → the event the turn's connection had last read when it was sent."""
        return math.nan if self.caught_up is None else (self.caught_up - self.sent) * 1000.0

    @property
    def events_per_s(self) -> float:
        """The replay's rate: events up to ``head`` over ``resume`` sent → that event read (its first
        event's latency included)."""
        if self.caught_up is None or self.caught_up <= self.sent:
            return math.nan
        return (self.head + 1) / (self.caught_up - self.sent)


class Ping:
    """``ping`` → ``pong`` on a connection: what any answer costs there, the floor under a first replayed
    event (the server reads the frame, answers, the client reads the answer)."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        self.sent = 0.0
        self.answered: float | None = None
        self.done: asyncio.Future[None] = client.loop.create_future()
        client.sink = self.on_frame

    def send(self) -> None:
        self.sent = time.perf_counter()
        self.client.send_text(b'{"type":"ping"}')

    def on_frame(self, data: Payload, now: float) -> None:
        if bytes(data).startswith(PONG_PREFIX) and self.answered is None:
            self.answered = now
            if not self.done.done():
                self.done.set_result(None)

    @property
    def rtt_ms(self) -> float:
        return math.nan if self.answered is None else (self.answered - self.sent) * 1000.0


def first_difference(got: list[bytes], expected: list[bytes]) -> int | None:
    """The index of the first frame that differs (or is missing, or extra); None when they are the same."""
    for index, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return index
    return None if len(got) == len(expected) else min(len(got), len(expected))


class AccountingDriver(StreamDriver):
    """A ``StreamDriver`` that also adds up what the turn logs account for the events it reads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accounted = 0
        self.events = 0
        self._frames: list[bytes] = []  # the current turn's

    def on_frame(self, data: Payload, now: float) -> None:
        if self.turn is not None:
            frame = bytes(data)
            self.events += 1
            self._frames.append(frame)
            if frame.startswith(COMPLETE_PREFIX):  # the turn ended: its log is sealed
                self.accounted += turn_log_bytes(self._frames)
                self._frames = []
        super().on_frame(data, now)
