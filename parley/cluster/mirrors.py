"""This process's turns, mirrored to Redis: every ``FLUSH_S`` (at once after an urgent event) the new events
of every turn go in one pipeline, each turn's as one stream entry (parley/cluster/batches.py), appended by a
script that refuses a batch out of order or from a process that no longer owns the turn. The heartbeat
keeps the process's lease and its running turns' keys alive, and picks up cancels whose message was lost.
No delta waits for Redis: a turn's log is only read here, between flushes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from parley.cluster.batches import pack
from parley.cluster.keys import PROCS, keys_of, member, message_key, turns_key
from parley.cluster.link import UNREACHABLE, Link
from parley.streams import Expired, TurnLog

log = logging.getLogger("parley.cluster")

FLUSH_S = 0.025  # events reach Redis at most this long after they were logged
REFUSALS_BEFORE_GIVING_UP = 3


@dataclass
class Mirror:
    """What of one local turn Redis has: events before ``flushed``, and which meta fields."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # this run of the turn (request ids recur)
    flushed: int = 0
    reset: bool = True  # the next append (re)creates the turn's keys, from the log's first kept event
    message_sent: bool = False
    refusals: int = 0


@dataclass
class Pending:
    """One turn's part of a flush."""

    log: TurnLog
    mirror: Mirror
    upto: int
    ended: bool
    message: str | None
    listed: bool = False  # the batch also adds the turn to this process's turns


class Mirrors:
    """Every running turn of this process, and what Redis has of each."""

    def __init__(self, link: Link, me: str, lease_s: float, resume_ttl_s: float) -> None:
        self.link = link
        self.me = me
        self.lease_s = lease_s
        self.running_ttl_ms = int((resume_ttl_s + lease_s) * 1000)
        self.ended_ttl_ms = int(resume_ttl_s * 1000)
        self.turns: dict[TurnLog, Mirror] = {}
        self._urgent: dict[TurnLog, None] = {}  # turns with an urgent event to send now, in order
        self._wake = asyncio.Event()

    def add(self, turn_log: TurnLog) -> None:
        """A new turn of this process (``TurnStreams.on_open``)."""
        self.turns[turn_log] = Mirror()
        turn_log.on_urgent = lambda: self._urge(turn_log)

    def _urge(self, turn_log: TurnLog) -> None:
        self._urgent[turn_log] = None
        self._wake.set()

    async def run(self) -> None:
        """Flush every turn every ``FLUSH_S`` while turns run, and a turn with an urgent event at once (that
        turn alone: at 100 streams, flushing all at every urgent event made an append per 6 deltas)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            if not self.turns:
                await self._wake.wait()
                due = loop.time() + FLUSH_S
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(due - loop.time(), 0))
            self._wake.clear()
            pause = self.link.retry_at - time.monotonic()
            if pause > 0:  # Redis was unreachable a moment ago
                await asyncio.sleep(pause)
            if loop.time() >= due:
                self._urgent.clear()
                due = loop.time() + FLUSH_S
                await self.flush()
            elif self._urgent:
                urgent, self._urgent = list(self._urgent), {}
                await self.flush(urgent)

    async def drain(self, timeout_s: float) -> None:
        """Flush until Redis has every event (the turns have ended), for at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.turns and time.monotonic() < deadline and self.link.reachable is not False:
            await self.flush()
            if self.turns:
                await asyncio.sleep(FLUSH_S)

    async def flush(self, only: list[TurnLog] | None = None) -> None:
        """Send the new events of every mirrored turn (or of ``only`` these), in one pipeline."""
        turns = (
            list(self.turns.items())
            if only is None
            else [(t, self.turns[t]) for t in only if t in self.turns]
        )
        pending = [p for p in (self._pending(t, m) for t, m in turns) if p is not None]
        if not pending:
            return
        try:
            await self.link.load_scripts()
            pipe = self.link.redis.pipeline(transaction=False)
            for item in pending:
                self._queue(pipe, item)
            results = await pipe.execute(raise_on_error=False)
        except UNREACHABLE as exc:
            self.link.unreachable(exc)
            return
        self.link.reached()
        replies = iter(results)
        for item in pending:
            outcome = next(replies)
            if item.listed:
                next(replies)  # the SADD to this process's turns
            if item.message is not None:
                next(replies)  # the message key's SET
            self._appended(item, outcome)

    def _pending(self, turn_log: TurnLog, mirror: Mirror) -> Pending | None:
        upto = turn_log.next_seq
        if turn_log.ended and turn_log.first_seq >= upto and mirror.flushed < upto:
            self._forget(turn_log)  # evicted before Redis had it all (down all along): nothing to send
            return None
        message = None
        if turn_log.message_id is not None and not mirror.message_sent:
            message = str(turn_log.message_id)  # sent at once: REST elsewhere finds the answer by it
        if mirror.flushed >= upto and not mirror.reset and message is None:
            return None
        return Pending(turn_log, mirror, upto, turn_log.ended, message)

    def _queue(self, pipe: Any, item: Pending) -> None:
        """One turn's append (and what goes with it) onto the flush's pipeline."""
        turn_log, mirror = item.log, item.mirror
        item.listed = mirror.reset
        if mirror.reset:
            mirror.flushed = turn_log.first_seq
        try:
            kinds, bodies = turn_log.bodies(mirror.flushed)
        except Expired:  # dropped here before Redis had it: Redis starts again from what is kept
            mirror.reset = True
            mirror.flushed = turn_log.first_seq
            kinds, bodies = turn_log.bodies(mirror.flushed)
        item.upto = mirror.flushed + len(bodies)
        joined, ends = pack(bodies)
        session = turn_log.session_id or ""
        ttl = self.ended_ttl_ms if item.ended else self.running_ttl_ms
        args = [self.me, mirror.token, mirror.flushed, len(bodies), kinds, ends, joined, ttl]
        args += [int(mirror.reset), int(item.ended), session, turn_log.session_seq if session else 0]
        pipe.evalsha(self.link.shas["append"], 2, *keys_of(turn_log), *args, *self._meta(item))
        who = member(turn_log.customer_id, turn_log.request_id)
        if item.listed:  # listed as this process's now, not at the next heartbeat: a crash may come first
            pipe.sadd(turns_key(self.me), who)
        if item.message is not None:
            pipe.set(message_key(item.message), who, px=ttl)

    @staticmethod
    def _meta(item: Pending) -> list[str]:
        """The meta hash's fields this append sets: who the turn is for, and which answer it writes."""
        turn_log, mirror = item.log, item.mirror
        fields = []
        if mirror.reset:
            fields += ["customer", turn_log.customer_id, "request", turn_log.request_id]
        if item.message is not None or (mirror.reset and turn_log.message_id is not None):
            user_message = str(turn_log.user_message_id or "")
            fields += ["message", str(turn_log.message_id), "user_message", user_message]
        return fields

    def _appended(self, item: Pending, outcome: Any) -> None:
        """What the append script answered (parley/cluster/scripts.py, ``APPEND``)."""
        turn_log, mirror = item.log, item.mirror
        if self.link.forgot_scripts(outcome):
            return  # sent again at the next flush
        if isinstance(outcome, Exception):
            mirror.refusals += 1
            log.warning("turn %s: Redis refused its events: %s", turn_log.request_id, outcome)
            if mirror.refusals >= REFUSALS_BEFORE_GIVING_UP:
                self._forget(turn_log)
            return
        code = int(outcome[0])
        if code == 0:
            mirror.flushed, mirror.reset, mirror.refusals = item.upto, False, 0
            mirror.message_sent = mirror.message_sent or item.message is not None
            if outcome[1] == b"1" and turn_log.cancel is not None:  # a cancel whose message was lost
                turn_log.cancel()
            if item.ended and mirror.flushed >= turn_log.next_seq:
                self._forget(turn_log)
        elif code == -1:  # Redis lost the turn's keys (restarted): write them again from the start
            mirror.reset, mirror.message_sent = True, False
        elif code == -3 and int(outcome[1]) == item.upto:  # an earlier flush landed; its reply did not
            mirror.flushed, mirror.reset = item.upto, False
        elif code == -3:
            mirror.reset = True
        else:  # -2: closed by another process (this one was taken for dead); -4: the id is taken
            why = "closed by another server process" if code == -2 else "another turn has its request_id"
            log.warning("turn %s: no longer sent to Redis: %s", turn_log.request_id, why)
            self._forget(turn_log)

    def _forget(self, turn_log: TurnLog) -> None:
        self.turns.pop(turn_log, None)
        turn_log.on_urgent = None

    async def beat(self) -> None:
        """Renew this process's lease and list its running turns; keep their keys alive; cancel those whose
        flag is set (a cancel whose message was lost, for a turn with nothing to flush)."""
        running = [t for t in self.turns if not t.ended]
        members = [member(t.customer_id, t.request_id) for t in running]
        ttl = int(self.lease_s * 4000)
        try:
            await self.link.load_scripts()
            pipe = self.link.redis.pipeline(transaction=False)
            pipe.evalsha(self.link.shas["heartbeat"], 2, PROCS, turns_key(self.me), self.me, ttl, *members)
            for turn_log in running:
                stream, meta = keys_of(turn_log)
                pipe.pexpire(stream, self.running_ttl_ms)
                pipe.pexpire(meta, self.running_ttl_ms)
                pipe.hget(meta, "cancel")
            results = await pipe.execute(raise_on_error=False)
        except UNREACHABLE as exc:
            self.link.unreachable(exc)
            return
        if self.link.forgot_scripts(results[0]):
            return
        self.link.reached()
        for index, turn_log in enumerate(running):
            if results[3 + 3 * index] == b"1" and turn_log.cancel is not None:
                turn_log.cancel()
