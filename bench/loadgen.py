"""The load generator: many WebSocket connections in one process, pinned by the harness to its own core.

    python -m bench.loadgen SPEC.json RESULT.json

Modes: ``stream`` (turns back to back on every connection, optionally cancelling some), ``idle`` (open
connections and hold them; server memory per connection), ``slow`` (clients that stop reading mid-answer,
beside paced bystander streams; server memory over time), ``resume`` (a turn run live, then ``resume``d from
other connections of the same customer: time to the first replayed event, replay rate; also while it
streams) and ``retain`` (ended turns kept for resume: server memory per turn beside what the log accounts).
The window's server CPU and the generator's own CPU are read here, at the window's edges, from /proc.
Progress goes to stderr as one JSON object per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import orjson

from bench.drivers import Recorder, StreamDriver, TurnLoad, Window
from bench.frames import chat_request, new_request_id
from bench.metrics import cpu_seconds, postgres_cpu_seconds, raise_nofile_limit, rss_bytes, slope, summary
from bench.remote import RemoteDriver
from bench.replay import AccountingDriver, LiveTurn, Ping, Replay, TurnOwner, first_difference
from bench.wsclient import Payload, WsClient, open_client

PROGRESS_INTERVAL_S = 0.5
WATCHDOG_INTERVAL_S = 0.5
CLOSE_WAIT_S = 10.0
MAX_ANSWER_CHARS = 1_000_000


@dataclass(frozen=True)
class Spec:
    """Everything a run needs; the harness writes it as JSON."""

    mode: Literal["stream", "idle", "slow", "resume", "retain"]
    url: str
    tokens: list[str]
    server_pid: int
    connections: int
    chunks: int = 200
    delta_chars: int = 8
    delay_ms: float = 0.0
    turns_per_session: int = 5
    cancel_fraction: float = 0.0
    max_turns: int = 0
    warmup_s: float = 2.0
    measure_s: float = 10.0
    start_spread_s: float = 0.5
    turn_timeout_s: float = 60.0
    connect_concurrency: int = 100
    connect_timeout_s: float = 30.0
    watch_postgres: bool = False
    idle_steps: int = 5
    settle_s: float = 1.5
    hold_s: float = 3.0
    slow_clients: int = 0
    slow_chunks: int = 900
    slow_delta_chars: int = 1000
    slow_read_events: int = 5
    slow_requests: int = 8
    rss_interval_s: float = 0.25
    resume_turns: int = 5  # resume: unpaced turns run live, then resumed
    resumes: int = 200  # resume: resumes of those (ended) turns, one at a time
    midturn_turns: int = 2  # resume: paced turns resumed while they stream
    midturn_resumes: int = 10  # resume: resumes of each, from fresh connections
    midturn_delay_ms: float = 2.0
    retain_phases: list[list[int]] = field(default_factory=list)  # retain: [turns, deltas] per phase
    urls: list[str] = field(default_factory=list)  # stream: connections round robin over these (or `url`)
    peer_pids: list[int] = field(default_factory=list)  # the cluster's other processes: server CPU too
    redis_pid: int = 0  # its Redis: CPU read on its own
    spread: bool = False  # (read by the harness: connect to every process of a cluster, into `urls`)
    remote_action: Literal["", "cancel", "resume"] = ""  # stream: sent on a second connection, elsewhere
    remote_url: str = ""  # where the second connections go (another process of the cluster)
    remote_fraction: float = 0.0  # resume: of the turns, resumed at a random delta on the second connection
    seed: int = 1

    def __post_init__(self) -> None:
        # The demo model streams the request's `text`: a big answer needs a big request, and requests are
        # frames, which Parley (and the floor) refuse past 1 MiB.
        shapes = [(self.chunks, self.delta_chars)]
        if self.mode == "slow":
            shapes.append((self.slow_chunks, self.slow_delta_chars))
        shapes += [(chunks, self.delta_chars) for _, chunks in self.retain_phases]
        for chunks, chars in shapes:
            if chunks * chars > MAX_ANSWER_CHARS:
                raise ValueError(f"{chunks} deltas of {chars} characters: the request would pass 1 MiB")

    @classmethod
    def load(cls, path: Path) -> Spec:
        raw = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def url_for(self, index: int, base: str = "") -> str:
        """Connection ``index``'s URL: round robin over ``urls`` (else ``url``), unless ``base`` is given,
        with its customer's token (round robin over the tokens)."""
        base = base or (self.urls[index % len(self.urls)] if self.urls else self.url)
        return f"{base}?token={self.tokens[index % len(self.tokens)]}" if self.tokens else base

    @property
    def turn_load(self) -> TurnLoad:
        return TurnLoad(
            self.chunks,
            self.delta_chars,
            self.delay_ms,
            self.turns_per_session,
            self.cancel_fraction,
            self.max_turns,
        )


@dataclass(frozen=True)
class Snapshot:
    """CPU readings at one instant: the server's (every process of a cluster, the main one first), the
    generator's own, PostgreSQL's (when watched), Redis's (when there is one)."""

    at: float
    server_each: tuple[float, ...]
    own_cpu: float
    db_cpu: float
    redis_cpu: float = 0.0

    @property
    def server_cpu(self) -> float:
        return sum(self.server_each)

    @classmethod
    def take(cls, spec: Spec) -> Snapshot:
        db = postgres_cpu_seconds() if spec.watch_postgres else 0.0
        servers = tuple(cpu_seconds(pid) for pid in (spec.server_pid, *spec.peer_pids))
        redis = cpu_seconds(spec.redis_pid) if spec.redis_pid else 0.0
        return cls(time.perf_counter(), servers, time.process_time(), db, redis)


def usage_between(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    wall = b.at - a.at
    usage: dict[str, Any] = {
        "window_s": wall,
        "server_cpu_s": b.server_cpu - a.server_cpu,
        "server_cpu_pct": 100 * (b.server_cpu - a.server_cpu) / wall,
        "gen_cpu_s": b.own_cpu - a.own_cpu,
        "gen_cpu_pct": 100 * (b.own_cpu - a.own_cpu) / wall,
        "db_cpu_s": b.db_cpu - a.db_cpu,
        "db_cpu_pct": 100 * (b.db_cpu - a.db_cpu) / wall,
    }
    if len(b.server_each) > 1:
        pairs = zip(a.server_each, b.server_each, strict=True)
        usage["server_cpu_each_pct"] = [100 * (y - x) / wall for x, y in pairs]
    if b.redis_cpu:
        usage["redis_cpu_s"] = b.redis_cpu - a.redis_cpu
        usage["redis_cpu_pct"] = 100 * (b.redis_cpu - a.redis_cpu) / wall
    return usage


@dataclass
class Progress:
    """One JSON line on stderr every half second: phase, open connections, deltas, turns, errors; and one
    as the measuring window opens, with its length (``window_s``)."""

    rec: Recorder
    phase: str = "connect"
    open: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def emit(self, **once: Any) -> None:
        line = {
            "phase": self.phase,
            "elapsed": round(time.perf_counter() - self.started, 2),
            "open": self.open,
            "deltas": self.rec.deltas,
            "turns": sum(self.rec.statuses.values()),
            "errors": self.rec.error_total,
            **self.extra,
            **once,
        }
        print(json.dumps(line), file=sys.stderr, flush=True)

    def open_window(self, phase: str, seconds: float) -> None:
        """Enter the measuring phase and say so at once (not at the next tick): the harness starts its
        profiler on this line, with the window's length."""
        self.phase = phase
        self.emit(window_s=seconds)

    async def run(self) -> None:
        while True:
            self.emit()
            await asyncio.sleep(PROGRESS_INTERVAL_S)


async def open_many(
    spec: Spec,
    first: int,
    count: int,
    rec: Recorder,
    progress: Progress,
    customer: int | None = None,
    base: str = "",
) -> list[WsClient]:
    """Open ``count`` connections, ``connect_concurrency`` handshakes at a time; failures are errors. Their
    customers' tokens go round robin from ``first``, or all are ``customer``'s; to ``base`` if given."""
    gate = asyncio.Semaphore(spec.connect_concurrency)

    async def one(index: int) -> WsClient | None:
        async with gate:
            try:
                url = spec.url_for(index if customer is None else customer, base)
                client = await open_client(url, spec.connect_timeout_s)
            except Exception as exc:  # refused, timed out, a non-101 answer: all count as connect errors
                rec.error("connect failed", repr(exc))
                return None
            progress.open += 1
            return client

    opened = await asyncio.gather(*(one(first + i) for i in range(count)))
    return [c for c in opened if c is not None]


async def close_all(clients: list[WsClient]) -> None:
    for client in clients:
        client.close()
    pending = [c.closed for c in clients if not c.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=CLOSE_WAIT_S)
    for client in clients:
        client.abort()


async def watchdog(drivers: Sequence[StreamDriver], limit_s: float) -> None:
    while True:
        await asyncio.sleep(WATCHDOG_INTERVAL_S)
        now = time.perf_counter()
        for driver in drivers:
            driver.time_out(now, limit_s)


def start_drivers(
    clients: list[WsClient], load: TurnLoad, rec: Recorder, spec: Spec, spread_s: float
) -> list[StreamDriver]:
    loop = asyncio.get_running_loop()
    rng = random.Random(spec.seed)
    drivers = []
    for client in clients:
        driver = StreamDriver(client, load, rec, random.Random(rng.random()), loop.create_future())
        loop.call_later(rng.uniform(0, spread_s), driver.start)
        drivers.append(driver)
    return drivers


async def measure_window(spec: Spec, rec: Recorder, progress: Progress) -> dict[str, Any]:
    """Warm up, then read CPU at the window's edges; the window is ``rec.window``."""
    progress.phase = "warmup"
    await asyncio.sleep(spec.warmup_s)
    before = Snapshot.take(spec)
    rec.window.start = before.at
    progress.open_window("measure", spec.measure_s)
    await asyncio.sleep(spec.measure_s)
    after = Snapshot.take(spec)
    rec.window.end = after.at
    progress.phase = "drain"
    return usage_between(before, after)


async def finish_drivers(drivers: list[StreamDriver], spec: Spec) -> None:
    if drivers:
        await asyncio.wait([d.done for d in drivers], timeout=spec.turn_timeout_s + 5)


def throughput(rec: Recorder, usage: dict[str, Any]) -> dict[str, Any]:
    """Rates in the window. Deltas are the model's (text characters ÷ delta size), frames the ``text``
    events that carried them: the same count unless the server coalesces."""
    window = usage["window_s"]
    deltas, frames, completed = rec.deltas_window, rec.frames_window, rec.completed_window
    per_delta = {}
    for what in ("gen", "db", "redis"):
        if f"{what}_cpu_s" in usage and deltas:
            per_delta[f"{what}_cpu_per_delta_us"] = 1e6 * usage[f"{what}_cpu_s"] / deltas
    return {
        **per_delta,
        "deltas_per_s": deltas / window,
        "frames_per_s": frames / window,
        "deltas_per_frame": deltas / frames if frames else math.nan,
        "turns_per_s": completed / window,
        "server_cpu_per_delta_us": 1e6 * usage["server_cpu_s"] / deltas if deltas else math.nan,
        "server_cpu_per_turn_us": 1e6 * usage["server_cpu_s"] / completed if completed else math.nan,
        "db_cpu_per_turn_us": 1e6 * usage["db_cpu_s"] / completed if completed else math.nan,
    }


# -- modes -----------------------------------------------------------------------------------------


async def run_stream(spec: Spec, rec: Recorder, progress: Progress) -> dict[str, Any]:
    clients = await open_many(spec, 0, spec.connections, rec, progress)
    remotes: list[WsClient] = []
    if spec.remote_action:  # each connection's twin, same customer, on another process
        remotes = await open_remotes(spec, clients, rec, progress)
    rec.window.planned_end = time.perf_counter() + spec.warmup_s + spec.measure_s
    if remotes:
        drivers: list[StreamDriver] = start_remote_drivers(clients, remotes, rec, spec)
    else:
        drivers = start_drivers(clients, spec.turn_load, rec, spec, spec.start_spread_s)
    guard = asyncio.create_task(watchdog(drivers, spec.turn_timeout_s))
    try:
        usage = await measure_window(spec, rec, progress)
        await finish_drivers(drivers, spec)
        await finish_replays(drivers, spec, rec)
    finally:
        guard.cancel()
    progress.phase = "close"
    await close_all(clients + remotes)
    result = {"open": len(clients) + len(remotes), **usage, **throughput(rec, usage), **rec.report()}
    if spec.cancel_fraction > 0:
        result["cancel"] = rec.cancel_report()
    if spec.remote_action == "resume":
        result["remote_resume"] = remote_resume_report(drivers, rec)
    return result


async def open_remotes(
    spec: Spec, clients: list[WsClient], rec: Recorder, progress: Progress
) -> list[WsClient]:
    """A second connection per connection, of the same customer, to ``remote_url``: every one must open
    (a missing twin would shift the pairs), else none is used and the run says so."""
    if len(clients) != spec.connections:
        rec.error("remote connections", "not every connection opened: no remote actions in this run")
        return []
    remotes = await asyncio.gather(
        *(open_many(spec, i, 1, rec, progress, base=spec.remote_url) for i in range(len(clients)))
    )
    if all(remotes):
        return [r[0] for r in remotes]
    rec.error("remote connections", "not every second connection opened: no remote actions in this run")
    await close_all([r[0] for r in remotes if r])
    return []


def start_remote_drivers(
    clients: list[WsClient], remotes: list[WsClient], rec: Recorder, spec: Spec
) -> list[StreamDriver]:
    loop = asyncio.get_running_loop()
    rng = random.Random(spec.seed)
    drivers: list[StreamDriver] = []
    for client, remote in zip(clients, remotes, strict=True):
        driver = RemoteDriver(
            client,
            remote,
            spec.remote_action,
            spec.remote_fraction,
            spec.turn_load,
            rec,
            random.Random(rng.random()),
            loop.create_future(),
        )
        loop.call_later(rng.uniform(0, spec.start_spread_s), driver.start)
        drivers.append(driver)
    return drivers


async def finish_replays(drivers: list[StreamDriver], spec: Spec, rec: Recorder) -> None:
    """The remote resumes still following their turns (behind the turns' own connections) end too."""
    pending = [r.done for d in drivers if isinstance(d, RemoteDriver) for r in d.replays if not r.done.done()]
    if pending:
        _, late = await asyncio.wait(pending, timeout=spec.turn_timeout_s)
        if late:
            rec.error("remote resume did not end", f"{len(late)} never read their turn's last event")


def remote_resume_report(drivers: list[StreamDriver], rec: Recorder) -> dict[str, Any]:
    """The resumes sent on the second connections in the window: time to the first replayed event, to the
    event the turn's own connection had read when it was sent, and whether each read the whole turn."""
    remote = [d for d in drivers if isinstance(d, RemoteDriver)]
    sent = [(d, r) for d in remote for r in d.replays if rec.window.inside(r.sent)]
    replays = [r for _, r in sent]
    whole = sum(d.whole(r) for d, r in sent)
    lags = [lag for d, r in sent if not math.isnan(lag := d.lag_ms(r))]
    return {
        **replay_summary(replays, whole),
        "sent": sum(len(d.replays) for d in remote),
        "refused": sum(bool(r.refused) for r in replays),
        "lag_ms": summary(lags),
    }


async def one_turn(spec: Spec, rec: Recorder, progress: Progress) -> None:
    """A short turn on a fresh connection, so that lazily built things exist before memory is read."""
    clients = await open_many(spec, 0, 1, rec, progress)
    load = TurnLoad(chunks=4, delta_chars=8, max_turns=1)
    drivers = start_drivers(clients, load, rec, spec, 0.0)
    await finish_drivers(drivers, spec)
    await close_all(clients)
    progress.open = 0


async def run_idle(spec: Spec, rec: Recorder, progress: Progress) -> dict[str, Any]:
    progress.phase = "warmup"
    await one_turn(spec, rec, progress)
    await asyncio.sleep(spec.settle_s)
    baseline = rss_bytes(spec.server_pid)
    series: list[tuple[int, int]] = [(0, baseline)]
    clients: list[WsClient] = []
    step = math.ceil(spec.connections / spec.idle_steps)
    for first in range(0, spec.connections, step):
        progress.phase = f"open {first + step}/{spec.connections}"
        clients += await open_many(spec, first, min(step, spec.connections - first), rec, progress)
        await asyncio.sleep(spec.settle_s)
        series.append((sum(c.is_open for c in clients), rss_bytes(spec.server_pid)))
    progress.open_window("hold", spec.hold_s)
    before = Snapshot.take(spec)
    await asyncio.sleep(spec.hold_s)
    usage = usage_between(before, Snapshot.take(spec))
    final = rss_bytes(spec.server_pid)
    still_open = sum(c.is_open for c in clients)
    progress.phase = "close"
    await close_all(clients)
    return {
        "open": len(clients),
        "open_at_end": still_open,
        "baseline_rss": baseline,
        "final_rss": final,
        "per_connection_bytes": (final - baseline) / max(1, len(clients)),
        "series": series,
        **usage,
        **rec.report(),
    }


class SlowReader:
    """A client that reads a few events of its big answers, then stops reading and later leaves."""

    def __init__(self, client: WsClient, read_events: int, rec: Recorder) -> None:
        self.client = client
        self.left = read_events
        self.rec = rec
        self.stalled: asyncio.Future[None] = client.loop.create_future()
        client.sink = self.on_frame
        client.on_close = self.on_close

    def on_frame(self, data: Payload, now: float) -> None:
        self.left -= 1
        if self.left <= 0 and not self.stalled.done():
            self.client.pause_reading()
            self.stalled.set_result(None)

    def on_close(self) -> None:
        if not self.stalled.done():
            self.rec.error("slow client closed before it stalled")
            self.stalled.set_result(None)


async def slow_cycles(spec: Spec, index: int, rec: Recorder, progress: Progress, counts: list[int]) -> None:
    """Until the window ends: connect, ask for big answers, stall after a few events, hold, drop."""
    while time.perf_counter() < rec.window.planned_end:
        opened = await open_many(spec, index, 1, rec, progress)
        if not opened:
            await asyncio.sleep(0.5)
            continue
        client = opened[0]
        reader = SlowReader(client, spec.slow_read_events, rec)
        for _ in range(spec.slow_requests):  # one runs, the rest wait in the connection's queue
            frame = chat_request(new_request_id(), spec.slow_chunks, spec.slow_delta_chars, 0.0)
            client.send_text(orjson.dumps(frame))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader.stalled), spec.turn_timeout_s)
        await asyncio.sleep(spec.hold_s)
        client.abort()
        progress.open -= 1
        counts[0] += 1


async def sample_rss(spec: Spec, series: list[tuple[float, int]], started: float) -> None:
    while True:
        series.append((time.perf_counter() - started, rss_bytes(spec.server_pid)))
        await asyncio.sleep(spec.rss_interval_s)


async def run_slow(spec: Spec, rec: Recorder, progress: Progress) -> dict[str, Any]:
    clients = await open_many(spec, 0, spec.connections, rec, progress)
    started = time.perf_counter()
    rec.window.planned_end = started + spec.warmup_s + spec.measure_s
    series: list[tuple[float, int]] = []
    counts = [0]
    background = [asyncio.create_task(sample_rss(spec, series, started))]
    drivers = start_drivers(clients, spec.turn_load, rec, spec, spec.start_spread_s)
    background.append(asyncio.create_task(watchdog(drivers, spec.turn_timeout_s)))
    slow = [
        asyncio.create_task(slow_cycles(spec, spec.connections + i, rec, progress, counts))
        for i in range(spec.slow_clients)
    ]
    try:
        usage = await measure_window(spec, rec, progress)
        await finish_drivers(drivers, spec)
        await asyncio.wait(slow, timeout=spec.hold_s + spec.turn_timeout_s)
    finally:
        for task in background + slow:
            task.cancel()
    progress.phase = "close"
    await close_all(clients)
    return {
        "open": len(clients),
        "slow_clients": spec.slow_clients,
        "slow_cycles": counts[0],
        "slow_answer_bytes": spec.slow_chunks * spec.slow_delta_chars,
        "slow_requests": spec.slow_requests,
        "rss": series,
        **usage,
        **throughput(rec, usage),
        **rec.report(),
    }


async def live_turn(owner: TurnOwner, spec: Spec, rec: Recorder, delay_ms: float = 0.0) -> LiveTurn:
    """Run one turn on the owner's connection, to its last event (or the turn timeout: an error)."""
    turn = owner.send(spec.chunks, delay_ms)
    try:
        await asyncio.wait_for(asyncio.shield(turn.done), spec.turn_timeout_s)
    except TimeoutError:
        rec.error("turn timed out", f"no fullProcessComplete after {spec.turn_timeout_s:.0f}s")
    if turn.status and turn.status != "completed":
        rec.error(f"turn {turn.status}", turn.request_id)
    return turn


async def await_replay(replay: Replay, spec: Spec, rec: Recorder) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(replay.done), spec.turn_timeout_s)
    except TimeoutError:
        rec.error("resume timed out", f"no fullProcessComplete after {spec.turn_timeout_s:.0f}s")
    if replay.refused:
        rec.error(f"resume refused: {replay.refused}", replay.request_id)


def check_replay(replay: Replay, turn: LiveTurn, rec: Recorder) -> bool:
    """The resumed connection read exactly the frames the turn's own connection read, in order."""
    differs = first_difference(replay.frames, turn.frames)
    if differs is not None:
        rec.error(
            "replay differs from the live turn",
            f"{turn.request_id}: frame {differs} of {len(replay.frames)} (live: {len(turn.frames)})",
        )
    return differs is None


def replay_summary(replays: list[Replay], identical: int) -> dict[str, Any]:
    return {
        "resumes": len(replays),
        "identical": identical,
        "first_ms": summary(r.first_ms for r in replays if not math.isnan(r.first_ms)),
        "replay_ms": summary(r.replay_ms for r in replays if not math.isnan(r.replay_ms)),
        "events": summary(float(r.head + 1) for r in replays),
        "events_per_s": summary(r.events_per_s for r in replays if not math.isnan(r.events_per_s)),
    }


async def resume_ended(
    spec: Spec, turns: list[LiveTurn], clients: list[WsClient], rec: Recorder, progress: Progress
) -> dict[str, Any]:
    """``resume`` ended turns from ``after_seq: -1``, one at a time, round robin over turns and
    connections."""
    replays, identical, pings = [], 0, []
    before = Snapshot.take(spec)
    for index in range(spec.resumes if turns else 0):
        turn, client = turns[index % len(turns)], clients[index % len(clients)]
        ping = Ping(client)  # the same round trip with nothing to replay, just before
        ping.send()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ping.done), spec.turn_timeout_s)
        pings.append(ping.rtt_ms)
        replay = Replay(client, turn.request_id, len(turn.frames) - 1)
        replay.send()
        await await_replay(replay, spec, rec)
        identical += check_replay(replay, turn, rec)
        replays.append(replay)
        progress.extra["resumes"] = len(replays)
    usage = usage_between(before, Snapshot.take(spec))
    events = sum(len(r.frames) for r in replays)
    return {
        **replay_summary(replays, identical),
        "ping_ms": summary(p for p in pings if not math.isnan(p)),
        "server_cpu_per_event_us": 1e6 * usage["server_cpu_s"] / events if events else math.nan,
        "server_cpu_pct": usage["server_cpu_pct"],
        "gen_cpu_pct": usage["gen_cpu_pct"],
    }


async def resume_midturn(spec: Spec, owner: TurnOwner, rec: Recorder, progress: Progress) -> dict[str, Any]:
    """Paced turns, each resumed from ``after_seq: -1`` by fresh connections of the same customer while it
    streams (spread over 10–80% of its expected length); each resumed connection then follows the turn live
    to its last event."""
    replays: list[Replay] = []
    identical, lags = 0, []
    expected_s = spec.chunks * spec.midturn_delay_ms / 1000
    for _ in range(spec.midturn_turns):
        clients = await open_many(spec, 0, spec.midturn_resumes, rec, progress, customer=0)
        turn = owner.send(spec.chunks, spec.midturn_delay_ms)
        started = time.perf_counter()
        these: list[Replay] = []
        for index, client in enumerate(clients):
            at = started + expected_s * (0.1 + 0.7 * index / max(1, len(clients) - 1))
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            if turn.done.done() or not turn.frames:
                rec.error("mid-turn resume too late", "the turn ended before its resume was due")
                continue
            replay = Replay(client, turn.request_id, len(turn.frames) - 1)
            replay.send()
            these.append(replay)
        try:
            await asyncio.wait_for(asyncio.shield(turn.done), spec.turn_timeout_s)
        except TimeoutError:
            rec.error("turn timed out", f"no fullProcessComplete after {spec.turn_timeout_s:.0f}s")
        for replay in these:
            await await_replay(replay, spec, rec)
            identical += check_replay(replay, turn, rec)
            if replay.ended is not None and turn.ended is not None:
                lags.append((replay.ended - turn.ended) * 1000.0)
        replays += these
        progress.extra["mid-turn resumes"] = len(replays)
        await close_all(clients)
        progress.open -= len(clients)
    return {**replay_summary(replays, identical), "delay_ms": spec.midturn_delay_ms, "lag_ms": summary(lags)}


async def run_resume(spec: Spec, rec: Recorder, progress: Progress) -> dict[str, Any]:
    owners = await open_many(spec, 0, 1, rec, progress, customer=0)
    clients = await open_many(spec, 0, spec.connections, rec, progress, customer=0)
    if not owners or not clients:
        await close_all(owners + clients)
        return {"open": len(owners) + len(clients), **rec.report()}
    owner = TurnOwner(owners[0], rec, spec.delta_chars)
    start = Snapshot.take(spec)
    progress.phase = "live"
    turns = [await live_turn(owner, spec, rec) for _ in range(spec.resume_turns)]
    done = [t for t in turns if t.status == "completed"]
    live = {
        "turns": len(done),
        "events": summary(float(len(t.frames)) for t in done),
        "deltas_per_s": summary(t.deltas_per_s for t in done if not math.isnan(t.deltas_per_s)),
        "events_per_s": summary(t.events_per_s for t in done if not math.isnan(t.events_per_s)),
        "turn_ms": summary((t.ended - t.sent) * 1000.0 for t in done if t.ended is not None),
    }
    progress.phase = "replay"
    ended = await resume_ended(spec, done, clients, rec, progress)
    progress.phase = "mid-turn"
    midturn = await resume_midturn(spec, owner, rec, progress)
    usage = usage_between(start, Snapshot.take(spec))
    progress.phase = "close"
    await close_all(owners + clients)
    return {
        "open": 1 + len(clients),
        "live": live,
        "ended": ended,
        "midturn": midturn,
        **usage,
        **rec.report(),
    }


async def retain_phase(
    spec: Spec, clients: list[WsClient], turns: int, chunks: int, rec: Recorder, progress: Progress
) -> dict[str, Any]:
    """``turns`` turns of ``chunks`` deltas, back to back over the connections; the server's RSS before,
    along the way (for the slope) and after they settle; what their logs account, from their frames."""
    per = math.ceil(turns / max(1, len(clients)))
    load = TurnLoad(chunks, spec.delta_chars, 0.0, spec.turns_per_session, max_turns=per)
    loop = asyncio.get_running_loop()
    rng = random.Random(spec.seed)
    before = rss_bytes(spec.server_pid)
    drivers = [
        AccountingDriver(client, load, rec, random.Random(rng.random()), loop.create_future())
        for client in clients
    ]
    for driver in drivers:
        driver.start()
    series: list[tuple[int, int]] = [(0, before)]
    pending = {d.done for d in drivers}
    guard = asyncio.create_task(watchdog(drivers, spec.turn_timeout_s))  # a stuck turn ends its driver
    try:
        while pending:
            _, pending = await asyncio.wait(pending, timeout=spec.rss_interval_s)
            series.append((sum(d.turns for d in drivers), rss_bytes(spec.server_pid)))
    finally:
        guard.cancel()
    await asyncio.sleep(spec.settle_s)
    after = rss_bytes(spec.server_pid)
    completed = sum(d.turns for d in drivers)
    accounted = sum(d.accounted for d in drivers)
    events = sum(d.events for d in drivers)
    return {
        "turns": completed,
        "deltas": chunks,
        "rss_before": before,
        "rss_after": after,
        "per_turn_bytes": (after - before) / completed if completed else math.nan,
        "slope_bytes": slope([float(n) for n, _ in series], [float(r) for _, r in series]),
        "accounted_per_turn": accounted / completed if completed else math.nan,
        "events_per_turn": events / completed if completed else math.nan,
        "series": series,
    }


async def run_retain(spec: Spec, rec: Recorder, progress: Progress) -> dict[str, Any]:
    clients = await open_many(spec, 0, spec.connections, rec, progress)
    progress.phase = "warmup"  # a turn of each size per connection, so lazily built things exist first
    for _, chunks in spec.retain_phases:
        await retain_phase(spec, clients, len(clients), chunks, rec, progress)
    start = Snapshot.take(spec)
    phases = []
    for turns, chunks in spec.retain_phases:
        progress.phase = f"{turns}×{chunks}"
        phases.append(await retain_phase(spec, clients, turns, chunks, rec, progress))
    usage = usage_between(start, Snapshot.take(spec))
    final = rss_bytes(spec.server_pid)
    progress.phase = "close"
    await close_all(clients)
    return {"open": len(clients), "phases": phases, "final_rss": final, **usage, **rec.report()}


MODES: dict[str, Callable[[Spec, Recorder, Progress], Awaitable[dict[str, Any]]]] = {
    "stream": run_stream,
    "idle": run_idle,
    "slow": run_slow,
    "resume": run_resume,
    "retain": run_retain,
}


async def run(spec: Spec) -> dict[str, Any]:
    rec = Recorder(Window())
    progress = Progress(rec)
    ticker = asyncio.create_task(progress.run())
    try:
        result = await MODES[spec.mode](spec, rec, progress)
    finally:
        ticker.cancel()
        progress.phase = "done"
        progress.emit()
    spec_out = {k: v for k, v in asdict(spec).items() if k != "tokens"}
    return {"mode": spec.mode, "spec": spec_out, **result}


def run_loop(spec: Spec) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(run(spec))
    return uvloop.run(run(spec))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.loadgen SPEC.json RESULT.json", file=sys.stderr)
        return 2
    raise_nofile_limit()
    result = run_loop(Spec.load(Path(args[0])))
    Path(args[1]).write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
