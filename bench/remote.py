"""Cancels and resumes sent on another process than the one running the turn (the `scaleout` scenario).

A ``RemoteDriver`` runs turns back to back on its connection, like a ``StreamDriver`` (to process A), and
holds a second connection of the same customer to another process of the cluster (B). With ``cancel``, the
turns' cancels go out on B (``cancelled`` still arrives on A: the canceller follows nothing); with
``resume``, a share of the turns are resumed on B with ``after_seq: -1`` at a random delta, and B follows
them from its replica to their end, one at a time. Everything here runs inside the generator.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from bench.drivers import StreamDriver, TurnState
from bench.replay import Replay, is_turn_error
from bench.wsclient import Payload, WsClient


class RemoteDriver(StreamDriver):
    def __init__(
        self, client: WsClient, remote: WsClient, action: str, fraction: float, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(client, *args, **kwargs)
        self.remote = remote
        self.action = action
        self.fraction = fraction
        self.replays: list[Replay] = []
        self.live: dict[str, tuple[int, float]] = {}  # request_id -> (events read on A, last one read at)
        self.resume_at: int | None = None
        if action == "cancel":
            self.control = remote
        remote.sink = self.on_remote
        remote.on_close = self.on_remote_close

    def start(self) -> None:
        before = self.turn
        super().start()
        busy = bool(self.replays) and not self.replays[-1].done.done()  # B follows one turn at a time
        self.resume_at = None
        fresh = self.turn is not before and self.turn is not None
        if self.action == "resume" and fresh and not busy and self.rng.random() < self.fraction:
            self.resume_at = self.rng.randint(1, max(1, self.load.chunks - 2))

    def _text(self, turn: TurnState, event: dict[str, Any], now: float) -> None:
        super()._text(turn, event, now)
        if self.resume_at is not None and turn.deltas >= self.resume_at:
            self.resume_at = None
            replay = Replay(self.remote, turn.request_id, turn.events - 1)  # it becomes B's sink
            self.remote.on_close = self.on_remote_close
            replay.send(-1)
            self.replays.append(replay)

    def _complete(self, turn: TurnState, status: str, now: float) -> None:
        if self.replays and self.replays[-1].request_id == turn.request_id:
            self.live[turn.request_id] = (turn.events, now)
        super()._complete(turn, status, now)

    def whole(self, replay: Replay) -> bool:
        """B read as many events of the turn as A did, ending with its last."""
        live = self.live.get(replay.request_id)
        return live is not None and replay.ended is not None and len(replay.frames) == live[0]

    def lag_ms(self, replay: Replay) -> float:
        """B read the turn's last event this long after A did."""
        live = self.live.get(replay.request_id)
        if live is None or replay.ended is None or replay.refused:
            return math.nan
        return (replay.ended - live[1]) * 1000.0

    def on_remote(self, data: Payload, now: float) -> None:
        """B between resumes (or all along, for cancels) follows nothing: anything but silence is wrong."""
        frame = bytes(data)
        if is_turn_error(frame):
            event = orjson.loads(frame)
            self.rec.error(f"remote error {event.get('code')}", str(event.get("content")))
        else:
            self.rec.error("remote connection got a frame", frame[:120].decode(errors="replace"))

    def on_remote_close(self) -> None:
        if not self.done.done():
            self.rec.error("remote connection closed")
