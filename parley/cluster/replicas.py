"""Turns of other processes, followed here. ``resume`` of a turn this process does not run makes a *replica*:
a log like the owner's (parley/streams.py), filled from the turn's stream and then fed by a blocking
``XREAD``. This process's followers follow it as they would a local turn — same replay, same dialects, and
seqs are the owner's, so no duplicate and no gap. Also REST's view of an answer streaming elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import orjson

from parley.cluster.batches import Batch, rebuild
from parley.cluster.keys import log_key, message_key, meta_key
from parley.cluster.link import FEED_BLOCK_MS, RETRY_MAX_S, UNREACHABLE, ClusterUnavailable, Link
from parley.protocol import STREAM_EXPIRED, encode, frame_error
from parley.streams import LiveAnswer, TurnLog, TurnStreams

log = logging.getLogger("parley.cluster")

REPLICA_IDLE_S = 10.0  # a replica no connection follows stops being fed after this
FEED_COUNT = 256  # stream entries per XREAD


class Replicas:
    """The replicas of this process, each with the task that feeds it."""

    def __init__(
        self,
        link: Link,
        streams: TurnStreams,
        lease_s: float,
    ) -> None:
        self.link = link
        self.streams = streams
        self.lease_s = lease_s
        self.tasks: set[asyncio.Task[None]] = set()
        self._arrivals: dict[TurnLog, asyncio.Event] = {}  # replicas a resume waits on (``caught_up``)

    async def open(self, customer_id: str, request_id: str) -> TurnLog | None:
        """The customer's turn from another process, as a log here that follows it; None when Redis knows
        no such turn (or its events are gone). Raises ``ClusterUnavailable``."""
        keys = (log_key(customer_id, request_id), meta_key(customer_id, request_id))
        try:
            pipe = self.link.redis.pipeline(transaction=False)
            pipe.hgetall(keys[1])
            pipe.xrange(keys[0])
            meta, entries = await pipe.execute()
        except UNREACHABLE as exc:
            raise ClusterUnavailable from exc
        found = self.streams.find(customer_id, request_id)  # made meanwhile by another resume
        if found is not None:
            return found
        if not meta or b"base" not in meta:
            return None
        replica = self.streams.open_replica(customer_id, request_id, int(meta[b"base"]))
        last_id = b"0-0"
        for entry_id, fields in entries:
            last_id = entry_id
            if not self._apply(replica, Batch.of(fields)):
                self.streams.forget(replica)
                return None
        if not replica.ended:
            self._own(self._feed(replica, keys, last_id), f"parley-replica-{request_id}")
        return replica

    async def caught_up(self, replica: TurnLog, seq: int, timeout_s: float) -> None:
        """Wait until a replica has event ``seq`` (or its turn ended), for at most ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while replica.next_seq <= seq and not replica.ended:
                    await self._arrivals.setdefault(replica, asyncio.Event()).wait()

    def _apply(self, replica: TurnLog, batch: Batch) -> bool:
        """Append a batch's new events to a replica; False at a gap (events the stream no longer has)."""
        self._arrived(replica)
        for seq, kind, body in batch.events():
            if seq < replica.next_seq:
                continue  # had already (a stream written again after Redis restarted)
            if seq > replica.next_seq:
                return False
            if batch.session is not None and replica.session_id is None and seq >= batch.session_seq:
                replica.set_session(batch.session)
            replica.append(kind, body)
            if replica.ended:
                break
        return True

    def _arrived(self, replica: TurnLog) -> None:
        arrived = self._arrivals.pop(replica, None)
        if arrived is not None:
            arrived.set()

    async def _feed(self, replica: TurnLog, keys: tuple[str, str], last_id: bytes) -> None:
        """Feed a replica from its stream until its turn ends, its stream is gone, or nobody has followed
        it for ``REPLICA_IDLE_S`` (a later resume makes it again)."""
        missing_since: float | None = None
        idle_since: float | None = None
        backoff = 0.1
        try:
            while not replica.ended:
                now = time.monotonic()
                idle_since = None if replica.followers else (idle_since or now)
                if idle_since is not None and now - idle_since > REPLICA_IDLE_S:
                    self.streams.forget(replica)
                    return
                try:
                    reply = await self.link.blocking.xread(
                        {keys[0]: last_id}, count=FEED_COUNT, block=FEED_BLOCK_MS
                    )
                    backoff = 0.1
                except UNREACHABLE:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, RETRY_MAX_S)
                    continue
                if reply:
                    missing_since = None
                    for entry_id, fields in reply[0][1]:
                        last_id = entry_id
                        if not self._apply(replica, Batch.of(fields)):
                            self._lose(replica)
                            return
                elif await self._missing(keys[1]):
                    missing_since = now if missing_since is None else missing_since
                    if now - missing_since > 2 * self.lease_s:  # not written again by its owner: gone
                        self._lose(replica)
                        return
                else:
                    missing_since = None
        finally:
            self._arrived(replica)

    async def _missing(self, meta: str) -> bool:
        """Whether the turn's keys are gone from Redis (False when Redis cannot tell now)."""
        try:
            return not await self.link.redis.exists(meta)
        except UNREACHABLE:
            return False

    def _lose(self, replica: TurnLog) -> None:
        frame = {**frame_error("stream_expired", STREAM_EXPIRED), "request_id": replica.request_id}
        replica.lose(encode(frame))

    def _own(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """A task of this process's replicas: cancelled and awaited by ``close``."""
        task = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def live_answers(
        self, customer_id: str, message_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, LiveAnswer]:
        """What the turns running elsewhere that write these answers have sent so far."""
        found: dict[uuid.UUID, LiveAnswer] = {}
        for message_id in message_ids:
            try:
                live = await self._live_answer(customer_id, message_id)
            except UNREACHABLE as exc:
                log.warning("the live answer %s could not be read from Redis: %s", message_id, exc)
                continue
            if live is not None:
                found[message_id] = live
        return found

    async def _live_answer(self, customer_id: str, message_id: uuid.UUID) -> LiveAnswer | None:
        named = await self.link.redis.get(message_key(message_id))
        if named is None:
            return None
        customer, request_id = orjson.loads(named)
        if customer != customer_id:
            return None
        pipe = self.link.redis.pipeline(transaction=False)
        pipe.hgetall(meta_key(customer, request_id))
        pipe.xrange(log_key(customer, request_id))
        meta, entries = await pipe.execute()
        if not meta or meta.get(b"ended") == b"1" or meta.get(b"message") != str(message_id).encode():
            return None
        events = [e for _, fields in entries for e in Batch.of(fields).events()]
        return rebuild(events, int(meta[b"next"]) - 1)
