"""Closing the turns of processes that died. Each process renews its heartbeat every quarter of
``PARLEY_OWNER_LEASE_S``; one silent for three quarters of it is dead (as is one seen to have exited on this
host). Another process then claims it, closes each of its answers with the text the turn's log holds
(``error``/``interrupted``: all that was streamed, not only the last checkpoint), and appends ``error``,
``dbOperationExecuted`` and the final event, fenced on the dead owner, so that clients following the turn
elsewhere end cleanly."""

from __future__ import annotations

import logging
import time
import uuid

import orjson

from parley.cluster.batches import Batch, Closing, pack, rebuild
from parley.cluster.keys import PROCS, log_key, meta_key, turns_key
from parley.cluster.link import UNREACHABLE, ClusterUnavailable, Link
from parley.errors import DatabaseFailed
from parley.protocol import TurnEmitter, TurnStatus
from parley.store.owners import CloseFromLog
from parley.store.repository import Store
from parley.streams import LiveAnswer

log = logging.getLogger("parley.cluster")

RECOVERY_LOCK_MS = 60_000
INTERRUPTED_TEXT = (
    "The server streaming this answer stopped; the answer is stored as it was streamed until then."
)


class Takeover:
    """The sweep for dead processes, and the closing of their turns."""

    def __init__(self, link: Link, store: Store, me: str, lease_s: float, ended_ttl_ms: int) -> None:
        self.link = link
        self.store = store
        self.me = me
        self.lease_s = lease_s
        self.ended_ttl_ms = ended_ttl_ms

    async def recover(self, exited: tuple[str, ...] = ()) -> int:
        """Close the turns of every process silent for three quarters of the lease, and of ``exited``.
        How many turns were closed."""
        try:
            silent = await self.link.script("dead", [PROCS], [int(self.lease_s * 750)])
        except (*UNREACHABLE, ClusterUnavailable) as exc:
            self.link.unreachable(exc)
            return 0
        # Back from an outage of Redis, every heartbeat looks old until its process beats again: silence
        # means death only once this process has been connected for half a lease (two heartbeats).
        settled = time.monotonic() - self.link.reached_at >= self.lease_s / 2
        dead = {p.decode() for p in silent} if settled else set()
        closed = 0
        for process_id in sorted((dead | set(exited)) - {self.me}):
            try:
                closed += await self._recover_process(process_id)
            except (*UNREACHABLE, ClusterUnavailable) as exc:
                log.warning("could not close the turns of process %s: %s", process_id, exc)
        if closed:
            log.warning("closed %d turn(s) of server processes that stopped, from their logs", closed)
        return closed

    async def _recover_process(self, process_id: str) -> int:
        redis = self.link.redis
        lock = f"{PROCS}:recovering:{process_id}"
        if not await redis.set(lock, self.me, nx=True, px=RECOVERY_LOCK_MS):
            return 0  # another process is on it
        closed, failed = 0, False
        try:
            for raw in await redis.smembers(turns_key(process_id)):
                customer_id, request_id = orjson.loads(raw)
                try:
                    closed += await self._recover_turn(process_id, customer_id, request_id)
                except DatabaseFailed as exc:
                    failed = True
                    log.warning("turn %s: not closed (%s); tried again later", request_id, exc.message)
            if not failed:  # else the process stays listed, and the next sweep tries again
                pipe = redis.pipeline(transaction=False)
                pipe.zrem(PROCS, process_id)
                pipe.delete(turns_key(process_id))
                await pipe.execute()
        finally:
            await redis.delete(lock)
        return closed

    async def _recover_turn(self, process_id: str, customer_id: str, request_id: str) -> int:
        """Close one turn of a dead process: 1 when this process closed it."""
        keys = [log_key(customer_id, request_id), meta_key(customer_id, request_id)]
        meta = await self.link.redis.hgetall(keys[1])
        if meta.get(b"owner") != process_id.encode() or meta.get(b"ended") == b"1":
            return 0
        next_seq = int(meta[b"next"])
        entries = await self.link.redis.xrange(keys[0])
        answer = rebuild([e for _, fields in entries for e in Batch.of(fields).events()], next_seq - 1)
        stored = await self._close_answer(meta, answer)
        closing = self._closing_events(meta, request_id, stored, next_seq)
        joined, ends = pack(closing.bodies)
        session = meta.get(b"session", b"").decode()
        args = [process_id, self.me, next_seq, len(closing.bodies), bytes(closing.kinds), ends, joined]
        args += [self.ended_ttl_ms, session, int(meta.get(b"session_seq", b"0"))]
        if await self.link.script("takeover", keys, args) != 1:
            return 0
        if stored is None or stored[0] not in ("completed", "cancelled"):  # not finished after all
            self.store.metrics.interrupted(1)
        return 1

    async def _close_answer(
        self, meta: dict[bytes, bytes], answer: LiveAnswer
    ) -> tuple[str, str | None] | None:
        """Store the answer as interrupted, with the log's text; its status after (None: no answer row)."""
        message = meta.get(b"message")
        if not message:
            return None  # the turn died before its question was stored
        # A log that kept every event has the whole text; one that lost its oldest keeps the checkpoint's.
        whole = int(meta.get(b"base", b"0")) == 0
        content, reasoning = (answer.content, answer.reasoning) if whole else (None, None)
        write = CloseFromLog(uuid.UUID(message.decode()), content, reasoning, answer.seq)
        stored: tuple[str, str | None] | None = await self.store.run(
            write, "The interrupted answer could not be closed."
        )
        return stored

    @staticmethod
    def _closing_events(
        meta: dict[bytes, bytes], request_id: str, stored: tuple[str, str | None] | None, next_seq: int
    ) -> Closing:
        """The events that end the turn, as the stored answer has it: ``error`` (interrupted) unless its
        process finished it after all, then ``dbOperationExecuted`` (when stored) and the end."""
        closing = Closing(next_seq)
        emitter = TurnEmitter(closing, request_id)
        emitter.session_id = meta.get(b"session", b"").decode() or None
        status: TurnStatus = "error"
        if stored is not None and stored[0] in ("completed", "cancelled"):
            status = "completed" if stored[0] == "completed" else "cancelled"
        else:
            emitter.error("database", "interrupted", INTERRUPTED_TEXT)
        message, user_message = meta.get(b"message"), meta.get(b"user_message")
        if stored is not None and message and user_message:
            emitter.db_operation(user_message.decode(), message.decode(), status, None)
        emitter.complete_turn(status)
        return closing
