"""Scale-out: Parley processes that share one PostgreSQL database and one Redis (``PARLEY_REDIS_URL``) behave
as one server. Redis carries what a turn has beyond its rows: its event log, its cancel and its owner.

**The log.** A turn's events are logged in its own process first (parley/streams.py), and that process's
connections are served from there, never through Redis. Every ``FLUSH_S`` (at once for an urgent event:
``working``, the first text, ``cancelled``, the end) the new events of every turn go to Redis in one
pipeline, each turn's as one stream entry: the batch's kinds, its bodies joined and their end offsets, the
layout the in-process log seals its chunks in. An entry's id is ``0-<seq after its last event>``, so Redis
refuses an entry that repeats or goes back; the append script also checks that the batch starts where the
stream ends and that the appender still owns the turn (the fence: a process that lost its turn to recovery,
after a pause longer than its lease, cannot write after the turn was closed). No delta waits for Redis.

**Elsewhere.** ``resume`` on a process that does not run the turn makes a *replica*: a log like the owner's,
filled from the stream and then fed by a blocking ``XREAD``, which that process's followers follow as they
would a local turn (same replay, same dialects, no duplicate and no gap: seqs are the owner's). A cancel
names the turn in its meta hash and publishes to its owner's channel; the owner also sees the flag at its
next flush or heartbeat, should the message be lost. REST's view of an answer streaming elsewhere is
rebuilt from its stream.

**Owners.** Each process renews its entry in a sorted set every quarter of ``PARLEY_OWNER_LEASE_S``, with
the set of its running turns. A process silent for three quarters of the lease is dead: another claims its
turns, closes each answer with the text from the log (``error``/``interrupted``), and appends ``error``,
``dbOperationExecuted`` and the final event, so that clients following it elsewhere end cleanly.

**Keys.** Cluster-compatible: one turn's keys share a hash tag (``{t:<customer>:<request_id>}``), the
process registry has its own (``{procs}``). A running turn's keys live ``PARLEY_RESUME_TTL_S`` plus the lease
and are renewed; an ended turn's expire ``PARLEY_RESUME_TTL_S`` after its end.

**Redis down.** Turns go on streaming to their own clients and are stored; their events wait in their own
logs and are sent when Redis is back (a stream Redis lost is written again from the turn's first kept
event). A cross-process resume or cancel gets ``cluster_unavailable`` meanwhile. Every call has a timeout;
nothing waits on Redis in the event loop's hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from parley.errors import DatabaseFailed, ParleyError
from parley.protocol import STREAM_EXPIRED, Kind, TurnEmitter, TurnStatus, encode, frame_error
from parley.store.owners import CloseFromLog
from parley.store.repository import Store
from parley.streams import Expired, LiveAnswer, TurnLog, TurnStreams

log = logging.getLogger("parley.cluster")

FLUSH_S = 0.025  # events reach Redis at most this long after they were logged
CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0
FEED_BLOCK_MS = 2000  # a replica's XREAD waits this long for new entries, then checks the turn still exists
RETRY_MAX_S = 2.0  # Redis unreachable: tried again after 0.1 s, doubling up to this
REPLICA_IDLE_S = 10.0  # a replica no connection follows stops being fed after this
RECOVERY_LOCK_MS = 60_000
CHANNEL = "parley:cancel:"  # + the owner's process id
DELETED = "parley:deleted"  # sessions and branches deleted, for the turns writing into them
PROCS = "parley:{procs}"  # sorted set: process id -> its last heartbeat (ms, Redis's clock)
INTERRUPTED_TEXT = (
    "The server streaming this answer stopped; the answer is stored as it was streamed until then."
)
UNAVAILABLE_TEXT = (
    "That turn runs on another server process, which cannot be reached now (Redis is unreachable)."
)
_BIG_ENDIAN = sys.byteorder == "big"


class ClusterUnavailable(ParleyError):
    """A turn of another process cannot be reached: Redis is unreachable."""

    code = "cluster_unavailable"

    def __init__(self, message: str = UNAVAILABLE_TEXT) -> None:
        super().__init__(message, code=self.code)


# -- keys --------------------------------------------------------------------------------------------------


def turn_tag(customer_id: str, request_id: str) -> str:
    """One turn's hash tag. The customer's length first: no two (customer, request_id) pairs make the same
    tag, whatever they hold."""
    return f"{{t:{len(customer_id)}:{customer_id}:{request_id}}}"


def log_key(customer_id: str, request_id: str) -> str:
    return f"parley:{turn_tag(customer_id, request_id)}:log"


def meta_key(customer_id: str, request_id: str) -> str:
    return f"parley:{turn_tag(customer_id, request_id)}:meta"


def message_key(message_id: uuid.UUID | str) -> str:
    return f"parley:{{m:{message_id}}}"


def turns_key(process_id: str) -> str:
    return f"{PROCS}:turns:{process_id}"


def member(customer_id: str, request_id: str) -> bytes:
    return orjson.dumps([customer_id, request_id])


# -- scripts -----------------------------------------------------------------------------------------------

# KEYS: log, meta. ARGV: owner, turn token, first seq, count, kinds, ends, bodies, ttl ms, reset (0|1),
# ended (0|1), session id ('' if none), session seq, then field/value pairs for the meta hash.
# Returns {0, cancel flag} or {code}: -1 the stream is gone (Redis lost it), -2 fenced (not ours any more),
# -3 the batch does not start where the stream ends ({-3, next}), -4 another running turn holds the id.
APPEND = """
local log, meta = KEYS[1], KEYS[2]
local owner = redis.call('HGET', meta, 'owner')
local mine = owner == ARGV[1] and redis.call('HGET', meta, 'turn') == ARGV[2]
if ARGV[9] == '1' then
  if owner and not mine then
    if redis.call('HGET', meta, 'turn') == ARGV[2] then return {-2} end
    if redis.call('HGET', meta, 'ended') ~= '1' then return {-4} end
  end
  redis.call('DEL', log, meta)
  redis.call('HSET', meta, 'owner', ARGV[1], 'turn', ARGV[2], 'next', ARGV[3], 'base', ARGV[3], 'ended', '0')
elseif not owner then
  return {-1}
elseif not mine then
  return {-2}
end
local first, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local nxt = tonumber(redis.call('HGET', meta, 'next'))
if first ~= nxt then return {-3, nxt} end
if ARGV[11] ~= '' then redis.call('HSET', meta, 'session', ARGV[11], 'session_seq', ARGV[12]) end
if count > 0 then
  local id = '0-' .. string.format('%d', first + count)
  if ARGV[11] ~= '' then
    redis.call('XADD', log, id, 'f', ARGV[3], 'k', ARGV[5], 'e', ARGV[6], 'b', ARGV[7],
      's', ARGV[11], 'ss', ARGV[12])
  else
    redis.call('XADD', log, id, 'f', ARGV[3], 'k', ARGV[5], 'e', ARGV[6], 'b', ARGV[7])
  end
  redis.call('HSET', meta, 'next', first + count)
end
for i = 13, #ARGV, 2 do redis.call('HSET', meta, ARGV[i], ARGV[i + 1]) end
if ARGV[10] == '1' then redis.call('HSET', meta, 'ended', '1') end
redis.call('PEXPIRE', log, ARGV[8])
redis.call('PEXPIRE', meta, ARGV[8])
return {0, redis.call('HGET', meta, 'cancel') or ''}
"""

# KEYS: log, meta. ARGV: the dead owner, the recovering process, first seq, count, kinds, ends, bodies,
# ttl ms, session, session seq. The closing events of a dead owner's turn: 1 appended, 0 not its any more.
TAKEOVER = """
local log, meta = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'owner', 'ended', 'next')
if m[1] ~= ARGV[1] or m[2] == '1' then return 0 end
if tonumber(m[3]) ~= tonumber(ARGV[3]) then return -3 end
local id = '0-' .. string.format('%d', tonumber(ARGV[3]) + tonumber(ARGV[4]))
redis.call('XADD', log, id, 'f', ARGV[3], 'k', ARGV[5], 'e', ARGV[6], 'b', ARGV[7],
  's', ARGV[9], 'ss', ARGV[10])
redis.call('HSET', meta, 'owner', ARGV[2], 'ended', '1', 'next', tonumber(ARGV[3]) + tonumber(ARGV[4]))
redis.call('PEXPIRE', log, ARGV[8])
redis.call('PEXPIRE', meta, ARGV[8])
return 1
"""

# KEYS: meta. ARGV: the message to publish, the channel prefix. 0: no such turn, 1: it ended, 2: cancelling.
CANCEL = """
local m = redis.call('HMGET', KEYS[1], 'owner', 'ended')
if not m[1] then return 0 end
if m[2] == '1' then return 1 end
redis.call('HSET', KEYS[1], 'cancel', '1')
redis.call('PUBLISH', ARGV[2] .. m[1], ARGV[1])
return 2
"""

# KEYS: the registry, this process's turns. ARGV: process id, ttl ms, its running turns. Returns Redis's now.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('DEL', KEYS[2])
for i = 3, #ARGV, 1000 do
  redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return now
"""

# KEYS: the registry. ARGV: silence ms. The processes that have not renewed for that long.
DEAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - tonumber(ARGV[1])))
"""

SCRIPTS = {"append": APPEND, "takeover": TAKEOVER, "cancel": CANCEL, "heartbeat": HEARTBEAT, "dead": DEAD}


# -- batches -----------------------------------------------------------------------------------------------


def pack(bodies: list[str]) -> tuple[str, bytes]:
    """Bodies as one string and their end offsets (little-endian uint32)."""
    ends = array("I", accumulate(map(len, bodies)))
    if _BIG_ENDIAN:
        ends.byteswap()
    return "".join(bodies), ends.tobytes()


@dataclass(frozen=True)
class Batch:
    """One stream entry, read back: events ``first`` on, and the session they carry from ``session_seq``."""

    first: int
    kinds: bytes
    ends: array[int]
    joined: str
    session: str | None
    session_seq: int

    @classmethod
    def of(cls, fields: dict[bytes, bytes]) -> Batch:
        ends = array("I")
        ends.frombytes(fields[b"e"])
        if _BIG_ENDIAN:
            ends.byteswap()
        session = fields.get(b"s")
        return cls(
            int(fields[b"f"]),
            fields[b"k"],
            ends,
            fields[b"b"].decode(),
            session.decode() if session else None,
            int(fields.get(b"ss", b"0")),
        )

    def events(self) -> list[tuple[int, int, str]]:
        """(seq, kind, body) of each event."""
        out = []
        start = 0
        for index, end in enumerate(self.ends):
            out.append((self.first + index, self.kinds[index], self.joined[start:end]))
            start = end
        return out


def content_of(body: str) -> Any:
    return orjson.loads("{" + body + "}").get("content")


def rebuild(events: list[tuple[int, int, str]], seq: int) -> LiveAnswer:
    """An answer as its events say it: the text and reasoning deltas, and the tool steps."""
    text: list[str] = []
    reasoning: list[str] = []
    steps: list[dict[str, Any]] = []
    step_text: list[str] = []
    for _, kind, body in events:
        if kind == Kind.TEXT:
            delta = content_of(body)
            text.append(delta)
            step_text.append(delta)
        elif kind == Kind.REASONING:
            reasoning.append(content_of(body))
        elif kind == Kind.TOOL_USE:
            call = content_of(body)
            if not steps or steps[-1]["results"]:
                steps.append({"text": "".join(step_text), "calls": [], "results": []})
                step_text = []
            steps[-1]["calls"].append({"id": call["call_id"], "name": call["name"], "input": call["input"]})
        elif kind == Kind.TOOL_RESULT and steps:
            steps[-1]["results"].append(content_of(body))
    return LiveAnswer("".join(text), "".join(reasoning) if reasoning else None, steps or None, seq)


class Closing:
    """An ``EventLog`` that only collects: the closing events recovery appends for a dead owner."""

    def __init__(self, next_seq: int) -> None:
        self.first = next_seq
        self.kinds = bytearray()
        self.bodies: list[str] = []

    def append(self, kind: int, body: str, urgent: bool = False) -> int:
        self.kinds.append(kind)
        self.bodies.append(body)
        return self.first + len(self.bodies) - 1

    def set_session(self, session_id: str) -> None:
        pass


# -- the mirror of one turn --------------------------------------------------------------------------------


@dataclass
class Mirror:
    """What of one local turn Redis has: events before ``flushed``, and which meta fields."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    flushed: int = 0
    reset: bool = True  # the next append (re)creates the turn's keys, from the log's first kept event
    message_sent: bool = False
    failures: int = 0


@dataclass
class Pending:
    log: TurnLog
    mirror: Mirror
    upto: int
    ended: bool
    message: str | None
    listed: bool = False  # the batch also adds the turn to this process's turns


class Cluster:
    """This process's part in a cluster: mirrors its turns to Redis, follows and stops others' turns, keeps
    its lease, and closes the turns of processes that died. The app's lifespan starts and closes it."""

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
        self.store = store
        self.me = process_id
        self.lease_s = lease_s
        self._running_ttl_ms = int((resume_ttl_s + lease_s) * 1000)
        self._ended_ttl_ms = int(resume_ttl_s * 1000)
        options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_keepalive": True}
        # ``Any``: redis-py types every reply as a union of all it could be.
        self._redis: Any = aioredis.from_url(url, socket_timeout=COMMAND_TIMEOUT_S, **options)
        # Blocking reads hold their connection while they wait: their own pool.
        block_timeout = FEED_BLOCK_MS / 1000 + COMMAND_TIMEOUT_S
        self._blocking: Any = aioredis.from_url(url, socket_timeout=block_timeout, **options)
        self._shas: dict[str, str] = {}
        self._mirrors: dict[TurnLog, Mirror] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._feeds: set[asyncio.Task[None]] = set()
        self._arrivals: dict[TurnLog, asyncio.Event] = {}  # replicas a resume waits on (``caught_up``)
        self._retry_at = 0.0
        self._backoff = 0.0
        self.reachable: bool | None = None  # as last seen
        self._reached_at = 0.0  # when Redis was last found reachable after it was not (or at first)
        self.recovered = 0  # turns of dead processes this one closed
        streams.on_open = self._mirror

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register and start the background work. Redis being down is logged, not fatal: it is retried."""
        await self._beat()
        self._tasks = [
            asyncio.create_task(self._flusher(), name="parley-cluster-flush"),
            asyncio.create_task(self._keep_lease(), name="parley-cluster-lease"),
            asyncio.create_task(self._listen(), name="parley-cluster-cancels"),
        ]

    async def close(self, flush_s: float = 2.0) -> None:
        """Send what is left (this process's turns have ended), give up the lease, disconnect."""
        deadline = time.monotonic() + flush_s
        while self._mirrors and time.monotonic() < deadline and self.reachable is not False:
            await self.flush()
            if self._mirrors:
                await asyncio.sleep(FLUSH_S)
        tasks = [*self._tasks, *self._feeds]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RedisError, OSError):
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrem(PROCS, self.me)
            pipe.delete(turns_key(self.me))
            await asyncio.wait_for(pipe.execute(), COMMAND_TIMEOUT_S)
        await self._redis.aclose()
        await self._blocking.aclose()

    async def ping(self) -> bool:
        try:
            await asyncio.wait_for(self._redis.ping(), CONNECT_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError):
            return False
        return True

    # -- mirroring this process's turns ------------------------------------------------------------------

    def _mirror(self, turn_log: TurnLog) -> None:
        self._mirrors[turn_log] = Mirror()
        turn_log.on_urgent = self._wake.set

    async def _flusher(self) -> None:
        while True:
            if not self._mirrors:
                await self._wake.wait()
            elif not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), FLUSH_S)
            self._wake.clear()
            pause = self._retry_at - time.monotonic()
            if pause > 0:  # Redis was unreachable a moment ago
                await asyncio.sleep(pause)
            await self.flush()

    async def flush(self) -> None:
        """Send every mirrored turn's new events, in one pipeline."""
        pending = [p for p in (self._pending(t, m) for t, m in list(self._mirrors.items())) if p is not None]
        if not pending:
            return
        try:
            await self._load_scripts()
            pipe = self._redis.pipeline(transaction=False)
            for item in pending:
                self._queue_append(pipe, item)
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            self._unreachable(exc)
            return
        self._reached()
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
            self._unmirror(turn_log)  # evicted before Redis had it all (down all along): nothing to send
            return None
        if mirror.flushed >= upto and not mirror.reset:
            return None
        message = None
        if turn_log.message_id is not None and not mirror.message_sent:
            message = str(turn_log.message_id)
        return Pending(turn_log, mirror, upto, turn_log.ended, message)

    def _queue_append(self, pipe: Any, item: Pending) -> None:
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
        ttl = self._ended_ttl_ms if item.ended else self._running_ttl_ms
        extra: list[Any] = []
        if mirror.reset:
            extra += ["customer", turn_log.customer_id, "request", turn_log.request_id]
        if item.message is not None or (mirror.reset and turn_log.message_id is not None):
            extra += [
                "message",
                str(turn_log.message_id),
                "user_message",
                str(turn_log.user_message_id or ""),
            ]
        keys = (
            log_key(turn_log.customer_id, turn_log.request_id),
            meta_key(turn_log.customer_id, turn_log.request_id),
        )
        args = [
            self.me,
            mirror.token,
            mirror.flushed,
            len(bodies),
            kinds,
            ends,
            joined,
            ttl,
            int(mirror.reset),
            int(item.ended),
            session,
            turn_log.session_seq if session else 0,
            *extra,
        ]
        pipe.evalsha(self._shas["append"], 2, *keys, *args)
        if mirror.reset:  # listed as this process's now, not at the next heartbeat: a crash may come first
            pipe.sadd(turns_key(self.me), member(turn_log.customer_id, turn_log.request_id))
        if item.message is not None:
            pipe.set(message_key(item.message), member(turn_log.customer_id, turn_log.request_id), px=ttl)

    def _appended(self, item: Pending, outcome: Any) -> None:
        turn_log, mirror = item.log, item.mirror
        if isinstance(outcome, NoScriptError):  # Redis restarted: load the scripts again, then retry
            self._shas.clear()
            return
        if isinstance(outcome, Exception):
            mirror.failures += 1
            log.warning("turn %s: Redis refused its events: %s", turn_log.request_id, outcome)
            if mirror.failures >= 3:
                self._unmirror(turn_log)
            return
        code = int(outcome[0])
        if code == 0:
            mirror.flushed = item.upto
            mirror.reset = False
            mirror.failures = 0
            mirror.message_sent = mirror.message_sent or item.message is not None
            if outcome[1] == b"1" and turn_log.cancel is not None:  # a cancel whose message was lost
                turn_log.cancel()
            if item.ended and mirror.flushed >= turn_log.next_seq:
                self._unmirror(turn_log)
        elif code == -1:  # Redis lost the turn's keys (restarted): write them again from the start
            mirror.reset = True
            mirror.message_sent = False
        elif code == -3 and int(outcome[1]) == item.upto:  # an earlier flush landed; its reply did not
            mirror.flushed = item.upto
            mirror.reset = False
        elif code == -3:
            mirror.reset = True
        else:  # -2: closed by another process (this one was taken for dead); -4: the id is taken
            why = (
                "it was closed by another server process" if code == -2 else "another turn has its request_id"
            )
            log.warning("turn %s: no longer sent to Redis: %s", turn_log.request_id, why)
            self._unmirror(turn_log)

    def _unmirror(self, turn_log: TurnLog) -> None:
        self._mirrors.pop(turn_log, None)
        turn_log.on_urgent = None

    async def _load_scripts(self) -> None:
        if not self._shas:
            for name, script in SCRIPTS.items():
                self._shas[name] = await self._redis.script_load(script)

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script, loading it again if Redis forgot it."""
        for _ in range(2):
            await self._load_scripts()
            try:
                return await self._redis.evalsha(self._shas[name], len(keys), *keys, *args)
            except NoScriptError:
                self._shas.clear()
        raise ClusterUnavailable

    def _unreachable(self, exc: BaseException) -> None:
        if self.reachable is not False:
            log.warning("Redis is unreachable (%s); turns stream on in this process and are retried", exc)
        self.reachable = False
        self._backoff = min(max(self._backoff * 2, 0.1), RETRY_MAX_S)
        self._retry_at = time.monotonic() + self._backoff

    def _reached(self) -> None:
        if self.reachable is not True:
            if self.reachable is False:
                log.warning("Redis is reachable again")
            self._reached_at = time.monotonic()
        self.reachable = True
        self._backoff = 0.0
        self._retry_at = 0.0

    # -- the lease ---------------------------------------------------------------------------------------

    async def _keep_lease(self) -> None:
        """Renew this process's lease and look for dead processes, every quarter of the lease."""
        while True:
            await asyncio.sleep(self.lease_s / 4)
            await self._beat()
            await self.recover()

    async def _beat(self) -> None:
        running = [t for t in self._mirrors if not t.ended]
        try:
            await self._load_scripts()
            pipe = self._redis.pipeline(transaction=False)
            members = [member(t.customer_id, t.request_id) for t in running]
            ttl = int(self.lease_s * 4000)
            pipe.evalsha(self._shas["heartbeat"], 2, PROCS, turns_key(self.me), self.me, ttl, *members)
            for turn_log in running:
                keys = (
                    log_key(turn_log.customer_id, turn_log.request_id),
                    meta_key(turn_log.customer_id, turn_log.request_id),
                )
                pipe.pexpire(keys[0], self._running_ttl_ms)
                pipe.pexpire(keys[1], self._running_ttl_ms)
                pipe.hget(keys[1], "cancel")
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            self._unreachable(exc)
            return
        if isinstance(results[0], NoScriptError):
            self._shas.clear()
            return
        self._reached()
        for index, turn_log in enumerate(running):
            if results[3 + 3 * index] == b"1" and turn_log.cancel is not None:
                turn_log.cancel()

    # -- recovery ----------------------------------------------------------------------------------------

    async def recover(self, exited: tuple[str, ...] = ()) -> int:
        """Close the turns of every process that has not renewed its lease for three quarters of it, and of
        ``exited`` (seen to have exited on this host). How many turns were closed."""
        try:
            silent = await self._script("dead", [PROCS], [int(self.lease_s * 750)])
        except (RedisError, OSError, TimeoutError, ClusterUnavailable) as exc:
            self._unreachable(exc)
            return 0
        # Back from an outage of Redis, every heartbeat looks old until its process beats again: silence
        # means death only once this process has been connected for half a lease (two heartbeats).
        settled = time.monotonic() - self._reached_at >= self.lease_s / 2
        dead = {p.decode() for p in silent} if settled else set()
        dead = (dead | set(exited)) - {self.me}
        closed = 0
        for process_id in sorted(dead):
            try:
                closed += await self._recover_process(process_id)
            except (RedisError, OSError, TimeoutError, ClusterUnavailable) as exc:
                log.warning("could not close the turns of process %s: %s", process_id, exc)
        if closed:
            log.warning("closed %d turn(s) of server processes that stopped, from their logs", closed)
            self.recovered += closed
        return closed

    async def _recover_process(self, process_id: str) -> int:
        lock = f"{PROCS}:recovering:{process_id}"
        if not await self._redis.set(lock, self.me, nx=True, px=RECOVERY_LOCK_MS):
            return 0  # another process is on it
        closed, failed = 0, False
        try:
            for raw in await self._redis.smembers(turns_key(process_id)):
                customer_id, request_id = orjson.loads(raw)
                try:
                    closed += await self._recover_turn(process_id, customer_id, request_id)
                except DatabaseFailed as exc:
                    failed = True
                    log.warning(
                        "turn %s: could not be closed (%s); tried again later", request_id, exc.message
                    )
            if not failed:
                pipe = self._redis.pipeline(transaction=False)
                pipe.zrem(PROCS, process_id)
                pipe.delete(turns_key(process_id))
                await pipe.execute()
        finally:
            await self._redis.delete(lock)
        return closed

    async def _recover_turn(self, process_id: str, customer_id: str, request_id: str) -> int:
        keys = [log_key(customer_id, request_id), meta_key(customer_id, request_id)]
        meta = await self._redis.hgetall(keys[1])
        if meta.get(b"owner") != process_id.encode() or meta.get(b"ended") == b"1":
            return 0
        next_seq = int(meta[b"next"])
        events = [e for _, fields in await self._redis.xrange(keys[0]) for e in Batch.of(fields).events()]
        answer = rebuild(events, next_seq - 1)
        closing = Closing(next_seq)
        emitter = TurnEmitter(closing, request_id)
        session = meta.get(b"session", b"").decode() or None
        emitter.session_id = session
        status: TurnStatus = "error"
        message, user_message = meta.get(b"message"), meta.get(b"user_message")
        stored = None
        if message:
            # A log that kept every event has the whole text; one that lost its oldest keeps the checkpoint's.
            whole = int(meta.get(b"base", b"0")) == 0
            content, reasoning = (answer.content, answer.reasoning) if whole else (None, None)
            write = CloseFromLog(uuid.UUID(message.decode()), content, reasoning, next_seq - 1)
            stored = await self.store.run(write, "The interrupted answer could not be closed.")
        if stored is not None and stored[0] in ("completed", "cancelled"):
            status = "completed" if stored[0] == "completed" else "cancelled"
        else:
            emitter.error("database", "interrupted", INTERRUPTED_TEXT)
        if stored is not None and message and user_message:
            emitter.db_operation(user_message.decode(), message.decode(), status, None)
        emitter.complete_turn(status)
        joined, ends = pack(closing.bodies)
        session_seq = int(meta.get(b"session_seq", b"0"))
        args = [process_id, self.me, next_seq, len(closing.bodies), bytes(closing.kinds), ends, joined]
        args += [self._ended_ttl_ms, session or "", session_seq]
        done = await self._script("takeover", keys, args)
        return 1 if done == 1 else 0

    # -- cancel ------------------------------------------------------------------------------------------

    async def cancel(self, customer_id: str, request_id: str) -> bool:
        """Cancel the customer's turn wherever it runs: True when it was running and is told to stop.
        Raises ``ClusterUnavailable`` when Redis cannot be reached."""
        try:
            said = await self._script(
                "cancel", [meta_key(customer_id, request_id)], [member(customer_id, request_id), CHANNEL]
            )
        except (RedisError, OSError, TimeoutError) as exc:
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
            await self._redis.publish(DELETED, orjson.dumps(deleted))
        except (RedisError, OSError, TimeoutError) as exc:
            self._unreachable(exc)

    async def _listen(self) -> None:
        """Cancels for this process's turns, and deleted answers, from any process."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL + self.me, DELETED)
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        if message.get("channel") == DELETED.encode():
                            self._deleted(message["data"])
                        else:
                            self._cancelled(message["data"])
            except (RedisError, OSError, TimeoutError) as exc:
                self._unreachable(exc)
                await asyncio.sleep(max(self._backoff, 0.1))

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

    # -- following another process's turn ----------------------------------------------------------------

    async def replica(self, customer_id: str, request_id: str) -> TurnLog | None:
        """The customer's turn from another process, as a log here that follows it; None when Redis knows
        no such turn (or its events are gone). Raises ``ClusterUnavailable``."""
        keys = (log_key(customer_id, request_id), meta_key(customer_id, request_id))
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(keys[1])
            pipe.xrange(keys[0])
            meta, entries = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise ClusterUnavailable from exc
        found = self.streams.find(customer_id, request_id)  # made meanwhile by another resume
        if found is not None:
            return found
        if not meta or b"base" not in meta:
            return None
        replica = self.streams.open_replica(customer_id, request_id, int(meta[b"base"]))
        replica.cancel = lambda: self._cancel_from(replica)
        last_id = b"0-0"
        for entry_id, fields in entries:
            last_id = entry_id
            if not self._apply(replica, Batch.of(fields)):
                self.streams.forget(replica)
                return None
        if not replica.ended:
            task = asyncio.create_task(
                self._feed(replica, keys, last_id), name=f"parley-replica-{request_id}"
            )
            self._feeds.add(task)
            task.add_done_callback(self._feeds.discard)
        return replica

    async def caught_up(self, replica: TurnLog, seq: int, timeout_s: float) -> None:
        """Wait until a replica has event ``seq`` (or its turn ended), for at most ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while replica.next_seq <= seq and not replica.ended:
                    await self._arrivals.setdefault(replica, asyncio.Event()).wait()

    def _apply(self, replica: TurnLog, batch: Batch) -> bool:
        """Append a batch's new events to a replica; False at a gap (events the stream no longer has)."""
        arrived = self._arrivals.pop(replica, None)
        if arrived is not None:
            arrived.set()
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

    async def _feed(self, replica: TurnLog, keys: tuple[str, str], last_id: bytes) -> None:
        """Feed a replica from its stream until its turn ends (or nobody follows it for a while)."""
        try:
            await self._follow(replica, keys, last_id)
        finally:
            arrived = self._arrivals.pop(replica, None)
            if arrived is not None:
                arrived.set()

    async def _follow(self, replica: TurnLog, keys: tuple[str, str], last_id: bytes) -> None:
        missing_since: float | None = None
        idle_since: float | None = None
        backoff = 0.1
        while not replica.ended:
            now = time.monotonic()
            if replica.followers:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since > REPLICA_IDLE_S:
                self.streams.forget(replica)  # a later resume makes it again
                return
            try:
                reply = await self._blocking.xread({keys[0]: last_id}, count=256, block=FEED_BLOCK_MS)
                backoff = 0.1
            except (RedisError, OSError, TimeoutError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)
                continue
            if reply:
                for entry_id, fields in reply[0][1]:
                    last_id = entry_id
                    if not self._apply(replica, Batch.of(fields)):
                        self._lose(replica)
                        return
                missing_since = None
                continue
            try:
                exists = await self._redis.exists(keys[1])
            except (RedisError, OSError, TimeoutError):
                continue
            if exists:
                missing_since = None
            elif missing_since is None:
                missing_since = now
            elif now - missing_since > 2 * self.lease_s:  # not written again by its owner: gone
                self._lose(replica)
                return

    def _lose(self, replica: TurnLog) -> None:
        frame = {**frame_error("stream_expired", STREAM_EXPIRED), "request_id": replica.request_id}
        replica.lose(encode(frame))

    def _cancel_from(self, replica: TurnLog) -> None:
        """A cancel on this process of a turn that runs on another (a replica's ``cancel``)."""
        task = asyncio.create_task(self._cancel_quietly(replica.customer_id, replica.request_id))
        self._feeds.add(task)
        task.add_done_callback(self._feeds.discard)

    async def _cancel_quietly(self, customer_id: str, request_id: str) -> None:
        with contextlib.suppress(ClusterUnavailable):
            await self.cancel(customer_id, request_id)

    # -- REST --------------------------------------------------------------------------------------------

    async def live_answers(
        self, customer_id: str, message_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, LiveAnswer]:
        """What the turns running elsewhere that write these answers have sent so far."""
        found: dict[uuid.UUID, LiveAnswer] = {}
        for message_id in message_ids:
            try:
                named = await self._redis.get(message_key(message_id))
                if named is None:
                    continue
                customer, request_id = orjson.loads(named)
                if customer != customer_id:
                    continue
                pipe = self._redis.pipeline(transaction=False)
                pipe.hgetall(meta_key(customer, request_id))
                pipe.xrange(log_key(customer, request_id))
                meta, entries = await pipe.execute()
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("the live answer %s could not be read from Redis: %s", message_id, exc)
                continue
            if not meta or meta.get(b"ended") == b"1" or meta.get(b"message") != str(message_id).encode():
                continue
            events = [e for _, fields in entries for e in Batch.of(fields).events()]
            found[message_id] = rebuild(events, int(meta[b"next"]) - 1)
        return found


Recover = Callable[[tuple[str, ...]], Awaitable[int]]
