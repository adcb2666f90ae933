"""Per-turn event logs: every event of a turn, in order, kept for the connections that follow the turn.

A turn logs each event before any connection sees it (``TurnLog.append``). The connections that follow the
turn (the one that sent it, and any that ``resume`` it) are ``Follower``s, each encoding the events in its
own dialect: the log holds them dialect-neutral (``protocol.Kind`` and a body). A follower that joins late
first replays what it missed from the log, as fast as its socket takes it, then follows live; between the
last replayed event and going live there is no ``await``, so nothing falls between the two.

A log lives while its turn runs and for ``PARLEY_RESUME_TTL_S`` after its last event. Memory is bounded
twice: one turn's log keeps at most ``PARLEY_RESUME_TURN_BYTES`` (its oldest events go first), and all logs
together ``PARLEY_RESUME_BUFFER_BYTES`` (ended turns go first, oldest ended first; then the oldest events of
the biggest running turns). A resume that needs an event no longer kept gets ``stream_expired``.

``TurnStreams`` is the registry: logs by (customer, request_id), for ``resume`` and cancel from anywhere,
and by answer message, for the REST view of an answer still streaming.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from array import array
from bisect import bisect_right
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Protocol

from parley.config import Dialect
from parley.protocol import FrameEncoder, Kind

SESSION_DELETED = "session_deleted"  # the error code of an answer stopped because it was deleted
CHUNK = 64  # events per sealed chunk
# An open chunk is sealed sooner once its bodies hold this many characters: memory is counted (towards the
# caps) as chunks are sealed, so what a running turn holds uncounted stays below about this.
OPEN_CHARS = 16 * 1024
# A sealed chunk's fixed cost beyond its string and offsets: the tuple, the array's header, its list slot.
CHUNK_OVERHEAD = 128
EXPIRY_SWEEP_MAX_S = 5.0
NO_SESSION = 1 << 62  # ``session_seq`` until the session exists: no event carries it
_COMPLETE = int(Kind.COMPLETE)  # a plain int: compared at every event


class Outlet(Protocol):
    """Where a follower's frames go: a connection's ``Outbox``."""

    congested: bool
    detached: bool

    def push(self, data: str) -> None: ...

    def push_now(self, data: str) -> None: ...

    async def wait_ready(self) -> None: ...


@dataclass(frozen=True)
class LiveAnswer:
    """A streaming answer as its turn has it now: every text delta sent up to and including ``seq``."""

    content: str
    reasoning: str | None
    tool_steps: list[dict[str, Any]] | None
    seq: int


class Expired(Exception):
    """A follower needs an event its log no longer keeps."""


class TurnLog:
    """One turn's events, numbered from 0, and the followers they are handed to as they are logged.

    Bodies are kept in chunks of ``CHUNK`` events: the open chunk is a list of strings; a full one is
    sealed into one string and an array of offsets. A sealed chunk costs the bodies' characters and a few
    bytes an event (a string per event costs 50 bytes more, and each is one more object for the garbage
    collector to walk), and what it costs is known exactly (``sys.getsizeof``). Memory is freed a whole
    chunk at a time, oldest first.
    """

    __slots__ = (
        "_base",
        "_open",
        "_open_chars",
        "_seal_at",
        "_sealed",
        "_starts",
        "_streams",
        "bytes",
        "cancel",
        "congested",
        "customer_id",
        "ended_at",
        "followers",
        "kinds",
        "live",
        "message_id",
        "next_seq",
        "on_urgent",
        "replica",
        "request_id",
        "session_id",
        "session_seq",
        "stop",
        "user_message_id",
    )

    def last_seq(self) -> int:
        """The seq of the last event logged so far (-1 before the first)."""
        return self.next_seq - 1

    def __init__(self, streams: TurnStreams, customer_id: str, request_id: str) -> None:
        self._streams = streams
        self.customer_id = customer_id
        self.request_id = request_id
        self.kinds = bytearray()  # kinds[i] is the kind of the event with seq _base + i
        self._sealed: list[tuple[str, array[int]]] = []  # one string and its events' end offsets each
        self._starts: list[int] = []  # the seq of each sealed chunk's first event
        self._open: list[str] = []  # the bodies after the sealed chunks
        self._open_chars = 0
        self._seal_at = CHUNK - 1  # the seq that fills the open chunk
        self._base = 0  # the oldest event still kept
        self.next_seq = 0
        self.bytes = 0  # what the sealed chunks hold
        self.session_id: str | None = None
        self.session_seq = NO_SESSION  # events from this seq on carry session_id
        self.followers: list[Follower] = []  # replaced, never changed in place: ``append`` iterates it
        # A live follower's socket was backed up at its last event: the turn should ``wait_ready``.
        self.congested = False
        self.ended_at: float | None = None
        # Set by the turn: how to stop it (while it waits or runs) and what it has said so far (while
        # its answer row is ``streaming``).
        self.cancel: Callable[[], None] | None = None
        self.stop: Callable[[str], None] | None = None  # a cancel the server makes, with its reason's code
        self.live: Callable[[], LiveAnswer] | None = None
        self.message_id: uuid.UUID | None = None
        self.user_message_id: uuid.UUID | None = None
        # Scale-out (parley/cluster/): called at an urgent event, so the turn's events reach Redis now;
        # and whether this log is a copy of a turn that runs in another process (fed from Redis).
        self.on_urgent: Callable[[], None] | None = None
        self.replica = False

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def first_seq(self) -> int:
        """The oldest event still kept."""
        return self._base

    def append(self, kind: int, body: str, urgent: bool = False) -> int:
        """Log one event and hand it to every follower; return its seq. The hot path: one per delta."""
        seq = self.next_seq
        self.next_seq = seq + 1
        self.kinds.append(kind)
        self._open.append(body)
        self._open_chars += len(body)
        session = self.session_id
        for follower in self.followers:
            # ``Follower.deliver``, inlined for any event but the last: a call per event and follower was
            # a third of what the log cost a delta (callgrind).
            if kind == _COMPLETE:
                follower.deliver(kind, seq, body, session, urgent)
                continue
            if session is not follower._session:
                follower._switch(session)
            out = follower.out
            if urgent:
                out.push_now(f"{follower._prefixes[kind]}{seq},{body}}}")
            else:
                out.push(f"{follower._prefixes[kind]}{seq},{body}}}")
            follower.next_seq = seq + 1
            if out.congested:
                self.congested = True
        if seq >= self._seal_at or self._open_chars > OPEN_CHARS:
            self._seal()
        if kind == _COMPLETE:
            self._end()
        if urgent and self.on_urgent is not None:
            self.on_urgent()
        return seq

    def set_session(self, session_id: str) -> None:
        if self.session_id is None:
            self.session_id = session_id
            self.session_seq = self.next_seq

    async def wait_ready(self) -> None:
        """Wait for every backed-up follower (each gives up on its client after its stall timeout)."""
        for follower in self.followers:
            if follower.out.congested:
                await follower.out.wait_ready()
        self.congested = False

    # -- followers ---------------------------------------------------------------------------------------

    def start(self, after_seq: int, snake: bool) -> tuple[int, bool] | None:
        """Where a follower that has seen ``after_seq`` starts: (seq of the first event to send, whether
        snake's ``text_completed`` was seen already), or None when ``after_seq`` lies beyond the turn."""
        last = self.next_seq - 1
        closing = self.ended and snake  # snake's last event is one more frame: tts_not_requested
        if after_seq > last + closing:
            return None
        if closing and after_seq == last:
            return last, True
        return after_seq + 1, False

    def attach(self, follower: Follower) -> None:
        """Follow live from here on (the follower has replayed everything logged so far)."""
        if self.ended:
            follower.finish()
        else:
            self.followers = [*self.followers, follower]

    def detach(self, follower: Follower) -> None:
        if follower in self.followers:
            self.followers = [f for f in self.followers if f is not follower]

    def event(self, seq: int) -> tuple[int, str, str | None]:
        """The kept event ``seq``: its kind, body and the session id it carries. Raises ``Expired``."""
        index = seq - self._base
        if index < 0:
            raise Expired
        opened = self._open_from()
        if seq >= opened:
            body = self._open[seq - opened]
        else:
            chunk = bisect_right(self._starts, seq) - 1
            joined, ends = self._sealed[chunk]
            at = seq - self._starts[chunk]
            body = joined[ends[at - 1] if at else 0 : ends[at]]
        session = self.session_id if seq >= self.session_seq else None
        return self.kinds[index], body, session

    def bodies(self, start: int) -> tuple[bytes, list[str]]:
        """The kinds and bodies of the kept events from ``start`` on (for Redis). Raises ``Expired``."""
        if start < self._base:
            raise Expired
        kinds = bytes(self.kinds[start - self._base :])
        bodies: list[str] = []
        first = bisect_right(self._starts, start) - 1
        for index in range(max(first, 0), len(self._sealed)):
            joined, ends = self._sealed[index]
            chunk_start = self._starts[index]
            skip = max(start - chunk_start, 0)
            bounds = [0, *ends]
            bodies.extend(joined[bounds[i] : bounds[i + 1]] for i in range(skip, len(ends)))
        opened = self._open_from()
        bodies.extend(self._open[max(start - opened, 0) :])
        return kinds, bodies

    def lose(self, frame: str) -> None:
        """A replica whose source is gone (its events can no longer be had): every follower gets
        ``frame`` (``stream_expired``) and stops following; the log is forgotten."""
        followers, self.followers = self.followers, []
        for follower in followers:
            follower.out.push(frame)
            follower.finish()
        self._streams.forget(self)

    def _open_from(self) -> int:
        """The seq of the open chunk's first event."""
        return self.next_seq - len(self._open)

    # -- memory ------------------------------------------------------------------------------------------

    def trim(self, keep_bytes: int) -> None:
        """Drop the oldest chunks until at most ``keep_bytes`` are kept (the newest events always stay)."""
        sealed = self._sealed
        while self.bytes > keep_bytes and (len(sealed) > 1 or (sealed and self._open)):
            joined, ends = sealed.pop(0)
            del self._starts[0]
            self._account(-sealed_size(joined, ends))
            del self.kinds[: len(ends)]
            self._base += len(ends)

    def drop(self) -> None:
        """Forget every event (evicted): a follower still replaying gets ``Expired``."""
        self._account(-self.bytes)
        self._sealed = []
        self._starts = []
        self._open = []
        self._open_chars = 0
        self.kinds = bytearray()
        self._base = self.next_seq

    def _seal(self) -> None:
        """The open chunk as one string and its offsets, counted from now on; then the caps."""
        opened = self._open
        joined = "".join(opened)
        ends = array("I", accumulate(map(len, opened)))
        self._starts.append(self._open_from())
        self._sealed.append((joined, ends))
        self._open = []
        self._open_chars = 0
        self._seal_at = self.next_seq + CHUNK - 1
        self._account(sealed_size(joined, ends))
        streams = self._streams
        if self.bytes > streams.turn_cap or streams.total > streams.cap:
            streams.make_room(self)

    def _account(self, change: int) -> None:
        self.bytes += change
        self._streams.total += change

    def _end(self) -> None:
        if self._open:
            self._seal()
        self.ended_at = self._streams.clock()
        self.cancel = None
        self.stop = None
        self.live = None
        followers, self.followers = self.followers, []
        for follower in followers:
            follower.finish()
        self._streams.ended(self)
        if self.on_urgent is not None:  # the end reaches Redis now, not at the next flush
            self.on_urgent()


def sealed_size(joined: str, ends: array[int]) -> int:
    """What a sealed chunk holds in memory, as the logs count it: its string, its offsets and its kinds'
    bytes."""
    return sys.getsizeof(joined) + ends.itemsize * len(ends) + len(ends) + CHUNK_OVERHEAD


class Follower:
    """One connection following one turn, from a seq on, in the connection's dialect."""

    __slots__ = ("_encoder", "_on_done", "_prefixes", "_seen_head", "_session", "log", "next_seq", "out")

    def __init__(
        self,
        log: TurnLog,
        out: Outlet,
        dialect: Dialect,
        start: tuple[int, bool] = (0, False),
        on_done: Callable[[Follower], None] | None = None,
    ) -> None:
        self.log = log
        self.out = out
        self._encoder = FrameEncoder(dialect, log.request_id)
        self._session: str | None = None
        self._prefixes = self._encoder.prefixes(None)  # for events of ``_session``
        self.next_seq, self._seen_head = start
        self._on_done = on_done

    def deliver(self, kind: int, seq: int, body: str, session: str | None, urgent: bool) -> bool:
        """A live event (the hot path: one frame per text delta). True when the socket is backed up."""
        out = self.out
        if kind == _COMPLETE:
            self._closing(seq, body, session)
            return False
        if session is not self._session:
            self._switch(session)
        frame = f"{self._prefixes[kind]}{seq},{body}}}"
        if urgent:
            out.push_now(frame)
        else:
            out.push(frame)
        self.next_seq = seq + 1
        return out.congested

    def catch_up(self) -> bool:
        """Send the logged events from ``next_seq`` on: True once caught up, False when the socket is
        backed up first (call again once it is ready). Raises ``Expired`` for an event no longer kept."""
        log, out = self.log, self.out
        first = True
        while self.next_seq < log.next_seq and not out.detached:
            seq = self.next_seq
            kind, body, session = log.event(seq)
            if kind == _COMPLETE:
                self._closing(seq, body, session)
                return True
            if session is not self._session:
                self._switch(session)
            frame = f"{self._prefixes[kind]}{seq},{body}}}"
            if first:  # the first replayed event at once, the rest in one write at the loop's next turn
                out.push_now(frame)
                first = False
            else:
                out.push(frame)
            self.next_seq = seq + 1
            if out.congested:
                return False
        return True

    def finish(self) -> None:
        """The turn's last event was sent (or the follower joined after it): done."""
        done, self._on_done = self._on_done, None
        if done is not None:
            done(self)

    def _switch(self, session: str | None) -> None:
        self._session = session
        self._prefixes = self._encoder.prefixes(session)

    def _closing(self, seq: int, body: str, session: str | None) -> None:
        if session is not self._session:
            self._switch(session)
        if not self._seen_head:
            self.out.push(FrameEncoder.frame(self._prefixes, _COMPLETE, seq, body))
        if self._encoder.snake:
            self.out.push(self._encoder.tts_frame(seq + 1, body, session))
        self.next_seq = seq + 1  # done: live followers finish with the log, replaying ones on ``attach``


class TurnStreams:
    """Every turn log of this server: found by (customer, request_id) and by answer message; kept for the
    TTL after its turn ends, within the memory caps."""

    def __init__(
        self,
        ttl_s: float,
        cap_bytes: int,
        turn_cap_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.cap = cap_bytes
        self.turn_cap = min(turn_cap_bytes, cap_bytes)
        self.clock = clock
        self.total = 0  # bytes kept by every log's sealed chunks
        self._index: dict[tuple[str, str], TurnLog] = {}
        self._by_message: dict[uuid.UUID, TurnLog] = {}
        self._running: set[TurnLog] = set()
        self._running_by_customer: Counter[str] = Counter()  # of ``_running``
        self._ended: OrderedDict[TurnLog, None] = OrderedDict()  # oldest ended first
        self.on_open: Callable[[TurnLog], None] | None = None  # scale-out: mirror each new turn to Redis

    def __len__(self) -> int:
        return len(self._running) + len(self._ended)

    def open(self, customer_id: str, request_id: str) -> TurnLog:
        """A new turn's log. A later turn with the same request_id takes its place for lookups."""
        log = TurnLog(self, customer_id, request_id)
        self._index[(customer_id, request_id)] = log
        self._running.add(log)
        self._running_by_customer[customer_id] += 1
        if self.on_open is not None:
            self.on_open(log)
        return log

    def open_replica(self, customer_id: str, request_id: str, first_seq: int) -> TurnLog:
        """A copy of a turn running in another process, fed from Redis, whose first kept event is
        ``first_seq``: found as the turn's own log is, but not one of this process's running turns."""
        log = TurnLog(self, customer_id, request_id)
        log.replica = True
        log._base = log.next_seq = first_seq
        log._seal_at = first_seq + CHUNK - 1
        self._index[(customer_id, request_id)] = log
        return log

    def forget(self, log: TurnLog) -> None:
        """Drop a log now (a replica given up on)."""
        self._evict(log)

    def running(self, customer_id: str) -> int:
        """The customer's turns not yet ended: running, waiting behind another, or just opened."""
        return self._running_by_customer[customer_id]

    def find(self, customer_id: str, request_id: str) -> TurnLog | None:
        """The customer's turn with that request_id, running or ended within the TTL; else None (also
        for another customer's: the key includes the customer)."""
        log = self._index.get((customer_id, request_id))
        if log is not None and log.ended_at is not None and self.clock() - log.ended_at >= self.ttl_s:
            self._evict(log)
            return None
        return log

    def bind_message(
        self, log: TurnLog, message_id: uuid.UUID, user_message_id: uuid.UUID | None = None
    ) -> None:
        log.message_id = message_id
        log.user_message_id = user_message_id
        self._by_message[message_id] = log

    def stop_writing(self, customer_id: str, session_id: str | None, message_ids: Iterable[uuid.UUID]) -> int:
        """Stop the customer's running turns whose answers were deleted: every one streaming into
        ``session_id`` (the session is gone), and those writing one of ``message_ids`` (a branch is gone).
        They end as a cancel ends them, their ``cancelled`` event saying ``session_deleted``. How many."""
        doomed = {self._by_message.get(m) for m in message_ids}
        stopped = 0
        for log in list(self._running):
            gone = log in doomed or (session_id is not None and log.session_id == session_id)
            if gone and log.customer_id == customer_id and log.stop is not None:
                log.stop(SESSION_DELETED)
                stopped += 1
        return stopped

    def live_answer(self, message_id: uuid.UUID) -> LiveAnswer | None:
        """What the running turn that writes ``message_id`` has sent so far, if it runs here."""
        log = self._by_message.get(message_id)
        return log.live() if log is not None and log.live is not None else None

    def ended(self, log: TurnLog) -> None:
        if log in self._running:
            self._running.remove(log)
            left = self._running_by_customer[log.customer_id] - 1
            if left:
                self._running_by_customer[log.customer_id] = left
            else:
                del self._running_by_customer[log.customer_id]
        self._ended[log] = None
        self.expire()

    def expire(self) -> None:
        """Evict the ended logs whose TTL has passed (they are kept in the order they ended)."""
        now = self.clock()
        while self._ended:
            oldest = next(iter(self._ended))
            assert oldest.ended_at is not None
            if now - oldest.ended_at < self.ttl_s:
                return
            self._evict(oldest)

    def make_room(self, log: TurnLog) -> None:
        """Over a cap: trim this log to its own cap; then evict ended logs, oldest ended first; then trim
        the biggest running logs. Down to 90% of the server cap, so this is not done at every event."""
        if log.bytes > self.turn_cap:
            log.trim(self.turn_cap)
        if self.total <= self.cap:
            return
        target = self.cap * 9 // 10
        while self.total > target and self._ended:
            self._evict(next(iter(self._ended)))
        for running in sorted(self._running, key=lambda r: r.bytes, reverse=True):
            if self.total <= target:
                return
            running.trim(max(running.bytes - (self.total - target), 0))

    async def run_expiry(self) -> None:
        """Evict expired logs every so often, so an idle server lets them go too (the lifespan owns this)."""
        every = min(max(self.ttl_s / 4, 0.05), EXPIRY_SWEEP_MAX_S)
        while True:
            await asyncio.sleep(every)
            self.expire()

    def _evict(self, log: TurnLog) -> None:
        self._ended.pop(log, None)
        self._running.discard(log)
        key = (log.customer_id, log.request_id)
        if self._index.get(key) is log:
            del self._index[key]
        if log.message_id is not None and self._by_message.get(log.message_id) is log:
            del self._by_message[log.message_id]
        log.drop()


def ended_log_bytes(bodies: list[str]) -> int:
    """What an ended turn's log counts for these bodies (all its chunks sealed): for the benchmark, which
    reads the bodies off the frames it receives."""
    total = 0
    for start in range(0, len(bodies), CHUNK):
        chunk = bodies[start : start + CHUNK]
        total += sealed_size("".join(chunk), array("I", accumulate(map(len, chunk))))
    return total
