"""This process's part in a cluster (parley/cluster/__init__.py): it mirrors its turns to Redis, follows
and cancels the others', keeps its lease, and closes the turns of processes that died."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import orjson

from parley.cluster.keys import CHANNEL, DELETED, PROCS, member, meta_key, turns_key
from parley.cluster.link import COMMAND_TIMEOUT_S, UNREACHABLE, ClusterUnavailable, Link
from parley.cluster.mirrors import Mirrors
from parley.cluster.replicas import Replicas
from parley.cluster.takeover import Takeover
from parley.store.repository import Store
from parley.streams import LiveAnswer, TurnLog, TurnStreams

FLUSH_AT_CLOSE_S = 2.0


class Cluster:
    """Started and closed by the app's lifespan; the connections and routes ask it for turns that run
    elsewhere."""

    def __init__(
        self,
        url: str,
        streams: TurnStreams,
        store: Store,
        process_id: str,
        lease_s: float,
        resume_ttl_s: float,
    ) -> None:
        self.streams = streams
        self.me = process_id
        self.lease_s = lease_s
        self.link = Link(url)
        self.mirrors = Mirrors(self.link, process_id, lease_s, resume_ttl_s)
        self.replicas = Replicas(self.link, streams, lease_s)
        self.takeover = Takeover(self.link, store, process_id, lease_s, self.mirrors.ended_ttl_ms)
        self._tasks: list[asyncio.Task[None]] = []
        streams.on_open = self.mirrors.add

    async def start(self) -> None:
        """Register and start the background work. Redis being down is logged, not fatal: it is retried."""
        await self.mirrors.beat()
        self._tasks = [
            asyncio.create_task(self.mirrors.run(), name="parley-cluster-flush"),
            asyncio.create_task(self._keep_lease(), name="parley-cluster-lease"),
            asyncio.create_task(self._listen(), name="parley-cluster-listen"),
        ]

    async def close(self) -> None:
        """Send what is left (this process's turns have ended), give up the lease, disconnect."""
        await self.mirrors.drain(FLUSH_AT_CLOSE_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.replicas.close()
        with contextlib.suppress(*UNREACHABLE):
            pipe = self.link.redis.pipeline(transaction=False)
            pipe.zrem(PROCS, self.me)
            pipe.delete(turns_key(self.me))
            await asyncio.wait_for(pipe.execute(), COMMAND_TIMEOUT_S)
        await self.link.aclose()

    async def ping(self) -> bool:
        return await self.link.ping()

    async def _keep_lease(self) -> None:
        """Renew this process's lease and look for dead processes, every quarter of the lease."""
        while True:
            await asyncio.sleep(self.lease_s / 4)
            await self.mirrors.beat()
            await self.takeover.recover()

    async def recover(self, exited: tuple[str, ...] = ()) -> int:
        """Close the turns of dead processes (and of ``exited``, seen to have exited on this host)."""
        return await self.takeover.recover(exited)

    # -- other processes' turns --------------------------------------------------------------------------

    async def replica(self, customer_id: str, request_id: str) -> TurnLog | None:
        """The customer's turn from another process, followed here (parley/cluster/replicas.py)."""
        return await self.replicas.open(customer_id, request_id)

    async def caught_up(self, replica: TurnLog, seq: int, timeout_s: float) -> None:
        await self.replicas.caught_up(replica, seq, timeout_s)

    async def live_answers(
        self, customer_id: str, message_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, LiveAnswer]:
        return await self.replicas.live_answers(customer_id, message_ids)

    async def cancel(self, customer_id: str, request_id: str) -> bool:
        """Cancel the customer's turn wherever it runs: True when it was running and is told to stop.
        Raises ``ClusterUnavailable`` when Redis cannot be reached."""
        try:
            said = await self.link.script(
                "cancel", [meta_key(customer_id, request_id)], [member(customer_id, request_id), CHANNEL]
            )
        except UNREACHABLE as exc:
            raise ClusterUnavailable from exc
        return int(said) == 2

    async def stop_writing(
        self, customer_id: str, session_id: str | None, message_ids: list[uuid.UUID]
    ) -> None:
        """Tell every process that these answers were deleted (``TurnStreams.stop_writing``): the turns
        writing them stop, wherever they run. Best effort: with Redis down, a turn elsewhere ends as
        ``interrupted`` when its final write finds its answer gone."""
        deleted = {"customer": customer_id, "session": session_id, "messages": [str(m) for m in message_ids]}
        try:
            await self.link.redis.publish(DELETED, orjson.dumps(deleted))
        except UNREACHABLE as exc:
            self.link.unreachable(exc)

    # -- messages from other processes -------------------------------------------------------------------

    async def _listen(self) -> None:
        """Cancels for this process's turns, and deleted answers, from any process."""
        while True:
            try:
                async with self.link.redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL + self.me, DELETED)
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        if message.get("channel") == DELETED.encode():
                            self._deleted(message["data"])
                        else:
                            self._cancelled(message["data"])
            except UNREACHABLE as exc:
                self.link.unreachable(exc)
                await asyncio.sleep(max(self.link.backoff, 0.1))

    def _deleted(self, data: bytes) -> None:
        try:
            deleted = orjson.loads(data)
            messages = [uuid.UUID(m) for m in deleted["messages"]]
            self.streams.stop_writing(str(deleted["customer"]), deleted["session"], messages)
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError):
            return

    def _cancelled(self, data: bytes) -> None:
        try:
            customer_id, request_id = orjson.loads(data)
        except (orjson.JSONDecodeError, ValueError):
            return
        found = self.streams.find(customer_id, request_id)
        if found is not None and not found.replica and found.cancel is not None:
            found.cancel()
