"""This process's link to Redis: its clients, its scripts, and whether Redis answers (with the back-off of
every part that retries)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from parley.cluster.scripts import SCRIPTS
from parley.errors import ParleyError

log = logging.getLogger("parley.cluster")

CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0
FEED_BLOCK_MS = 2000  # a replica's XREAD waits this long for new entries, then checks the turn still exists
RETRY_MAX_S = 2.0  # Redis unreachable: tried again after 0.1 s, doubling up to this
UNAVAILABLE_TEXT = (
    "That turn runs on another server process, which cannot be reached now (Redis is unreachable)."
)
# What a call to Redis raises when Redis cannot be reached (or does not answer in time).
UNREACHABLE = (RedisError, OSError, TimeoutError)


class ClusterUnavailable(ParleyError):
    """A turn of another process cannot be reached: Redis is unreachable."""

    code = "cluster_unavailable"

    def __init__(self, message: str = UNAVAILABLE_TEXT) -> None:
        super().__init__(message, code=self.code)


class Link:
    """The Redis clients (one for commands, one whose connections block in ``XREAD``), the scripts' SHAs,
    and reachability: one warning when Redis goes, one when it is back."""

    def __init__(self, url: str) -> None:
        options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_keepalive": True}
        # ``Any``: redis-py types every reply as a union of all it could be.
        self.redis: Any = aioredis.from_url(url, socket_timeout=COMMAND_TIMEOUT_S, **options)
        block_timeout = FEED_BLOCK_MS / 1000 + COMMAND_TIMEOUT_S
        self.blocking: Any = aioredis.from_url(url, socket_timeout=block_timeout, **options)
        self.shas: dict[str, str] = {}
        self.reachable: bool | None = None  # as last seen
        self.reached_at = 0.0  # when Redis was found reachable after it was not (or the first time)
        self.backoff = 0.0
        self.retry_at = 0.0

    async def load_scripts(self) -> None:
        """Load the scripts (again, after Redis restarted and forgot them)."""
        if not self.shas:
            for name, script in SCRIPTS.items():
                self.shas[name] = await self.redis.script_load(script)

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script, loading it again if Redis forgot it."""
        for _ in range(2):
            await self.load_scripts()
            try:
                return await self.redis.evalsha(self.shas[name], len(keys), *keys, *args)
            except NoScriptError:
                self.shas.clear()
        raise ClusterUnavailable

    def forgot_scripts(self, reply: object) -> bool:
        """Whether a pipelined reply says Redis lost the scripts (then they are loaded again next time)."""
        if isinstance(reply, NoScriptError):
            self.shas.clear()
            return True
        return False

    def unreachable(self, exc: BaseException) -> None:
        if self.reachable is not False:
            log.warning("Redis is unreachable (%s); turns stream on in this process and are retried", exc)
        self.reachable = False
        self.backoff = min(max(self.backoff * 2, 0.1), RETRY_MAX_S)
        self.retry_at = time.monotonic() + self.backoff

    def reached(self) -> None:
        if self.reachable is not True:
            if self.reachable is False:
                log.warning("Redis is reachable again")
            self.reached_at = time.monotonic()
        self.reachable = True
        self.backoff = 0.0
        self.retry_at = 0.0

    async def ping(self) -> bool:
        try:
            await asyncio.wait_for(self.redis.ping(), CONNECT_TIMEOUT_S)
        except UNREACHABLE:
            return False
        return True

    async def aclose(self) -> None:
        await self.redis.aclose()
        await self.blocking.aclose()
