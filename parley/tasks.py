"""The owner of every background task: connection workers and the turns they run outlive their sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

log = logging.getLogger("parley.tasks")


class Cancellable(Protocol):
    def cancel(self, by_client: bool = True) -> None: ...


class Flushable(Protocol):
    async def flush(self, timeout_s: float) -> None: ...


class Idler(Protocol):
    def idle_expired(self, now: float) -> bool: ...

    def expire(self) -> None: ...


class Supervisor:
    """Spawns, tracks and, at shutdown, drains then cancels the app's background work."""

    def __init__(self) -> None:
        self.accepting = True
        self._tasks: set[asyncio.Task[Any]] = set()
        self.running: set[Cancellable] = set()  # turns in progress, for shutdown to stop
        self.outboxes: set[Flushable] = set()  # open connections' send queues, flushed before closing
        self.idlers: set[Idler] = set()  # open connections, for the idle sweep
        self._sweeper: asyncio.Task[None] | None = None

    def watch_idle(self, idler: Idler, every_s: float) -> None:
        """Check ``idler`` every ``every_s`` and expire it once idle: one timer for every connection
        instead of one per connection (and per frame)."""
        self.idlers.add(idler)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep(every_s), name="parley-idle-sweep")

    async def _sweep(self, every_s: float) -> None:
        loop = asyncio.get_running_loop()
        while self.idlers:  # ends with the last connection; the next one starts it again
            await asyncio.sleep(every_s)
            now = loop.time()
            for idler in [i for i in self.idlers if i.idle_expired(now)]:
                self.idlers.discard(idler)
                idler.expire()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task %s failed", task.get_name(), exc_info=exc)

    @property
    def busy(self) -> int:
        return len(self._tasks)

    async def drain(self, grace_s: float, hurry: Callable[[], bool] = lambda: False) -> None:
        """Stop taking turns; let running ones finish for ``grace_s``; then cancel, persist and await them.

        ``hurry`` cuts the grace period short when it turns true (a second Ctrl-C).
        """
        self.accepting = False
        if self._tasks:
            log.info("waiting up to %.0fs for %d running turn(s) to finish", grace_s, len(self.running))
            deadline = asyncio.get_running_loop().time() + grace_s
            while self._tasks and not hurry():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                await asyncio.wait(set(self._tasks), timeout=min(left, 0.1))
        if self.running:
            log.warning("cancelling %d turn(s); their partial answers are kept", len(self.running))
            for turn in list(self.running):
                turn.cancel(by_client=False)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=10)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def flush(self, timeout_s: float) -> None:
        """Give every open connection a moment to send what its turns said last, before sockets close."""
        if self.outboxes:
            await asyncio.wait([asyncio.create_task(o.flush(timeout_s)) for o in list(self.outboxes)])
