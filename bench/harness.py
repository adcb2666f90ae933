"""One case at a time: start the server, run the generator in its own process, check what was stored, stop.

The live progress line is drawn here from the generator's progress lines and /proc readings of both pids.
With ``--profile``, py-spy samples Parley while the generator's measuring window is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench import databases
from bench.metrics import (
    children_cpu_seconds,
    cpu_seconds,
    machine_busy_seconds,
    postgres_cpu_seconds,
    rss_bytes,
)
from bench.profiling import ProfileSetup, Recording, case_slug
from bench.scenarios import CUSTOMERS, Case, Scenario
from bench.servers import (
    PARLEY_BENCH_SETTINGS,
    PARLEY_KINDS,
    REPO,
    VARIANTS,
    Deployment,
    ParleySource,
    RedisServer,
    Server,
    ServerKind,
    clean_env,
    log_findings,
    pinned_to,
    start_floor,
    start_parley,
    start_redis,
)

PLAIN_PROGRESS_EVERY_S = 5.0
GENERATOR_SLACK_S = 90.0


class HarnessError(Exception):
    """A run could not be measured: a server did not start, the generator failed or hung."""


@dataclass
class RunRecord:
    """One server under one case: the generator's result and everything the harness saw around it."""

    scenario: str
    label: str
    level: int
    server: str
    database: str
    load: dict[str, Any] = field(default_factory=dict)
    stored: dict[str, Any] | None = None
    log: dict[str, Any] = field(default_factory=dict)
    peak_rss: int = 0
    wall_s: float = 0.0
    other_cpu_pct: float | None = None
    interrupt_cpu_pct: float | None = None
    exit_code: int | None = None
    failure: str | None = None
    skipped: str | None = None
    profile: dict[str, Any] | None = None  # bench.profiling.summarize's, with `file` or `error`
    parley_env: dict[str, str] = field(default_factory=dict)  # Parley's settings over the bench's own
    revision: str = ""  # which Parley ran (a Parley server: "parley" or "baseline")
    repeat: int = 0  # which run of a case with ``repeats`` (0: the first)
    # a Parley server's ``GET /metrics`` after the generator: HTTP status, ``parley_text_deltas_total``
    metrics_probe: dict[str, Any] | None = None

    @property
    def coalesce_ms(self) -> float:
        """The coalescing window this run had: 0 for the floor, which never coalesces."""
        if self.server not in PARLEY_KINDS:
            return 0.0
        return float(self.parley_env.get("PARLEY_COALESCE_MS", PARLEY_BENCH_SETTINGS["PARLEY_COALESCE_MS"]))

    @property
    def ok(self) -> bool:
        return self.failure is None and self.skipped is None and bool(self.load)


@dataclass
class Context:
    """What every run shares: cores, scratch space, the live line."""

    server_cores: set[int]
    generator_cores: set[int]
    scratch: Path
    live: Live
    source: ParleySource
    parley_env: dict[str, str] = field(default_factory=dict)
    profile: ProfileSetup | None = None
    baseline: ParleySource | None = None  # the "baseline" servers' Parley (``--baseline-rev``)
    seed: int = 1
    runs: int = 0

    @property
    def process_cores(self) -> list[set[int]]:
        """The cores of a cluster's processes, one each in turn: the first on the server's core, the second
        on the generator's (a 2-core machine has no other), and so on round robin."""
        cores = sorted(self.server_cores) + sorted(self.generator_cores - self.server_cores)
        return [{core} for core in cores]

    @property
    def all_cores(self) -> set[int]:
        """Where the run's Redis may run: anywhere the servers and the generator do, like PostgreSQL."""
        return self.server_cores | self.generator_cores


class Live:
    """The progress line: redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stdout) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.prefix = ""
        self._printed = 0.0

    def begin(self, index: int, title: str) -> None:
        self.prefix = f"[{index:>2}/{self.total}] {title}"
        self._write(f"{self.prefix}  starting", force=True)

    def update(self, line: dict[str, Any], server_pct: float, generator_pct: float, rate: float) -> None:
        text = (
            f"{self.prefix}  {line.get('phase', ''):<10} {line.get('elapsed', 0):5.1f}s"
            f"  open {line.get('open', 0):>5}  deltas/s {rate:>8,.0f}  turns {line.get('turns', 0):>6}"
            f"  errors {line.get('errors', 0)}  server CPU {server_pct:3.0f}%"
            f"  generator CPU {generator_pct:3.0f}%"
        )
        self._write(text)

    def end(self, summary: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"{self.prefix}  {summary}\n")
        self.stream.flush()

    def _write(self, text: str, force: bool = False) -> None:
        if self.tty:
            width = shutil.get_terminal_size((160, 20)).columns
            self.stream.write("\r" + text[: width - 1] + "\x1b[K")
        elif force or time.monotonic() - self._printed >= PLAIN_PROGRESS_EVERY_S:
            self.stream.write(text + "\n")
            self._printed = time.monotonic()
        else:
            return
        self.stream.flush()


class Watcher:
    """CPU of the server and the generator between two progress lines, and the server's peak RSS."""

    def __init__(self, server_pid: int, generator_pid: int) -> None:
        self.pids = (server_pid, generator_pid)
        self.at = time.perf_counter()
        self.cpu = self._cpu()
        self.deltas = 0
        self.peak_rss = 0

    def _cpu(self) -> tuple[float, float]:
        try:
            return cpu_seconds(self.pids[0]), cpu_seconds(self.pids[1])
        except (OSError, ValueError, IndexError):
            return self.cpu

    def sample(self, deltas: int) -> tuple[float, float, float]:
        now, cpu = time.perf_counter(), self._cpu()
        wall = max(now - self.at, 1e-6)
        rates = (
            100 * (cpu[0] - self.cpu[0]) / wall,
            100 * (cpu[1] - self.cpu[1]) / wall,
            (deltas - self.deltas) / wall,
        )
        self.at, self.cpu, self.deltas = now, cpu, deltas
        with contextlib.suppress(OSError):
            self.peak_rss = max(self.peak_rss, rss_bytes(self.pids[0]))
        return rates


def time_limit(load: dict[str, Any]) -> float:
    spent = float(load.get("warmup_s", 2)) + float(load.get("measure_s", 10)) + float(load.get("hold_s", 0))
    spent += float(load.get("budget_s", 0))  # modes that run a fixed amount of work, not a window
    connecting = int(load.get("connections", 1)) / 50
    return spent + connecting + float(load.get("turn_timeout_s", 60)) + GENERATOR_SLACK_S


async def run_generator(
    spec: dict[str, Any], server: Server, ctx: Context, recording: Recording | None
) -> tuple[dict[str, Any], int]:
    """Run ``bench.loadgen`` pinned to the generator's cores; return its result and the server's peak RSS.
    A ``recording`` starts when the generator's measuring window opens."""
    ctx.runs += 1
    spec_path, out_path = ctx.scratch / f"spec-{ctx.runs}.json", ctx.scratch / f"result-{ctx.runs}.json"
    spec_path.write_text(json.dumps(spec))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "bench.loadgen", str(spec_path), str(out_path)),
        cwd=REPO,
        env=clean_env({}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=pinned_to(ctx.generator_cores),
        start_new_session=True,
    )
    watcher = Watcher(server.pid, proc.pid)
    tail: deque[str] = deque(maxlen=25)
    try:
        async with asyncio.timeout(time_limit(spec)):
            await follow(proc, watcher, tail, ctx.live, recording)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise HarnessError("the generator did not finish in time:\n" + "\n".join(tail)) from None
    if proc.returncode != 0:
        raise HarnessError(f"the generator exited with {proc.returncode}:\n" + "\n".join(tail))
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result, watcher.peak_rss


async def follow(
    proc: asyncio.subprocess.Process,
    watcher: Watcher,
    tail: deque[str],
    live: Live,
    recording: Recording | None,
) -> None:
    assert proc.stderr is not None
    async for raw in proc.stderr:
        text = raw.decode(errors="replace").rstrip()
        try:
            line = json.loads(text)
        except ValueError:
            tail.append(text)
            continue
        if not isinstance(line, dict):
            continue
        if recording is not None and "window_s" in line:
            await recording.start(float(line["window_s"]))
        live.update(line, *watcher.sample(int(line.get("deltas", 0))))
    await proc.wait()


def parley_overrides(scenario: Scenario, ctx: Context) -> dict[str, str]:
    """The settings a scenario's Parley server gets over the bench's own: ``--parley-env``, then the
    scenario's (which win: ``coalesce`` is defined by its window)."""
    return {**ctx.parley_env, **scenario.parley_env}


def source_of(kind: str, ctx: Context) -> ParleySource:
    """Which Parley a server of ``kind`` runs."""
    if kind not in VARIANTS or VARIANTS[kind].source != "baseline":
        return ctx.source
    if ctx.baseline is None:
        raise HarnessError("a baseline server, but no baseline revision was exported (--baseline-rev)")
    return ctx.baseline


def database_of(kind: str, scenario: Scenario) -> str:
    """The database a server of ``kind`` runs on in ``scenario``: none for the floor."""
    if kind not in PARLEY_KINDS:
        return "none"
    return VARIANTS[kind].database or scenario.database


async def start_server(
    kind: str,
    scenario: Scenario,
    ctx: Context,
    database_url: str | None,
    *,
    cores: set[int] | None = None,
    secret: str | None = None,
    redis_url: str | None = None,
) -> Server:
    """One server process of ``kind`` (one of a cluster's, with its ``secret`` and ``redis_url``)."""
    if kind == "floor":
        return await asyncio.to_thread(start_floor, ctx.server_cores, ctx.scratch)
    parley: ServerKind = "baseline" if kind == "baseline" else "parley"
    extra = parley_overrides(scenario, ctx)
    if redis_url:
        extra = {**extra, "PARLEY_REDIS_URL": redis_url}
    variant = VARIANTS.get(kind, VARIANTS["parley"])
    return await asyncio.to_thread(
        start_parley,
        cores or ctx.server_cores,
        ctx.scratch,
        database_of(kind, scenario),
        database_url,
        source_of(kind, ctx),
        extra,
        kind=parley,
        secret=secret,
        metrics=variant.metrics,
    )


async def start_deployment(
    kind: str, scenario: Scenario, ctx: Context, database_url: str | None
) -> Deployment:
    """The servers of ``kind``: one process, or a cluster's (its Redis first, then its processes one after
    the other, so only the first migrates a fresh database), all with the first one's secret."""
    variant = VARIANTS.get(kind)
    if variant is None or (not variant.redis and variant.processes == 1):
        return Deployment([await start_server(kind, scenario, ctx, database_url)])
    deployment = Deployment([])
    try:
        redis: RedisServer | None = None
        if variant.redis:
            redis = await asyncio.to_thread(start_redis, ctx.all_cores, ctx.scratch)
            deployment.redis = redis
        cores = ctx.process_cores
        for index in range(variant.processes):
            secret = deployment.main.secret if deployment.servers else None
            server = await start_server(
                kind,
                scenario,
                ctx,
                database_url,
                cores=cores[index % len(cores)] if variant.processes > 1 else ctx.server_cores,
                secret=secret,
                redis_url=redis.url if redis else None,
            )
            deployment.servers.append(server)
    except BaseException:
        await asyncio.to_thread(deployment.stop)
        raise
    return deployment


def deployment_spec(deployment: Deployment, load: dict[str, Any]) -> dict[str, Any]:
    """Where the generator connects: every connection to the main process, or spread round robin over the
    processes (``spread``); with a ``remote`` action, its second connections go to the last process. The
    CPU of the other processes counts as the server's, Redis's is read on its own."""
    main, others = deployment.main, deployment.servers[1:]
    spec: dict[str, Any] = {"url": main.ws_url, "server_pid": main.pid}
    spec["peer_pids"] = [s.pid for s in others]
    if load.get("spread"):
        spec["urls"] = [s.ws_url for s in deployment.servers]
    if load.get("remote_action"):
        spec["remote_url"] = deployment.servers[-1].ws_url
    if deployment.redis is not None:
        spec["redis_pid"] = deployment.redis.pid
    return spec


async def stored_by_parley(
    server: Server, pg: databases.PgDatabase | None, load: dict[str, Any]
) -> dict[str, Any]:
    """What Parley stored after the run, checked against what the generator saw."""
    cancel = load.get("cancel") or {}
    records: list[dict[str, Any]] = cancel.pop("records", [])
    ids = [r["request_id"] for r in records]
    if pg is not None:
        stored = await databases.stored_postgres(pg, ids)
    else:
        stored = await asyncio.to_thread(databases.stored_sqlite, server.sqlite_path, ids)
    result: dict[str, Any] = {
        "statuses": dict(stored.statuses),
        "client_completed": int((load.get("statuses") or {}).get("completed", 0)),
    }
    if records:
        result["cancel"] = databases.check_cancelled(stored, records)
    return result


@dataclass
class Accounting:
    """CPU of the whole machine during a run: what other processes used (noise), and interrupts."""

    watch_postgres: bool
    started: float = field(default_factory=time.perf_counter)
    busy: tuple[float, float] = field(default_factory=machine_busy_seconds)
    children: float = field(default_factory=children_cpu_seconds)
    own: float = field(default_factory=time.process_time)
    postgres: float = 0.0

    def __post_init__(self) -> None:
        self.postgres = postgres_cpu_seconds() if self.watch_postgres else 0.0

    def shares(self) -> tuple[float, float]:
        """(other processes, interrupts) in % of one core over the run."""
        ours = children_cpu_seconds() - self.children + time.process_time() - self.own
        if self.watch_postgres:
            ours += postgres_cpu_seconds() - self.postgres
        tasks, interrupts = machine_busy_seconds()
        wall = time.perf_counter() - self.started
        other = max(0.0, 100 * (tasks - self.busy[0] - ours) / wall)
        return other, 100 * (interrupts - self.busy[1]) / wall


async def run_case(scenario: Scenario, case: Case, kind: str, ctx: Context) -> RunRecord:
    database = database_of(kind, scenario)
    record = RunRecord(scenario.name, case.label, case.level, kind, database)
    if kind in PARLEY_KINDS:
        record.parley_env = parley_overrides(scenario, ctx)
        if not VARIANTS[kind].metrics:
            record.parley_env["PARLEY_METRICS"] = "false"
        source = ctx.baseline if kind == "baseline" else ctx.source
        record.revision = source.description if source is not None else ""
    started = time.perf_counter()
    accounting = Accounting(watch_postgres=database == "postgres")
    pg = await databases.create_database() if database == "postgres" else None
    deployment: Deployment | None = None
    recording: Recording | None = None
    try:
        deployment = await start_deployment(kind, scenario, ctx, pg.url if pg else None)
        server = deployment.main
        spec = {**case.load, **deployment_spec(deployment, case.load), "tokens": server.tokens(CUSTOMERS)}
        if kind == "parley" and ctx.profile is not None and scenario.profiled:
            recording = Recording(ctx.profile, server.pid, case_slug(scenario.name, case.label))
        record.load, record.peak_rss = await run_generator({**spec, "seed": ctx.seed}, server, ctx, recording)
    except (HarnessError, RuntimeError, OSError) as exc:
        record.failure = str(exc)
    finally:
        try:
            if recording is not None:  # before the server stops: py-spy is still reading it
                record.profile = await recording.finish()
        finally:
            await wind_up(record, deployment, pg)
    record.wall_s = time.perf_counter() - started
    record.other_cpu_pct, record.interrupt_cpu_pct = accounting.shares()
    return record


def deployment_findings(servers: list[Server]) -> dict[str, Any]:
    """``log_findings`` of every process, added up (a cluster's samples say which process)."""
    found: list[dict[str, Any]] = [log_findings(server) for server in servers]
    if len(found) == 1:
        return found[0]
    merged: dict[str, Any] = {k: sum(int(f[k]) for f in found) for k in ("warnings", "errors", "tracebacks")}
    merged["samples"] = [f"[process {i + 1}] {line}" for i, f in enumerate(found) for line in f["samples"]]
    return merged


async def wind_up(record: RunRecord, deployment: Deployment | None, pg: databases.PgDatabase | None) -> None:
    """Stop the servers, read their logs and what they stored, remove their files and database."""
    try:
        if deployment is not None and deployment.servers:
            if deployment.main.kind in PARLEY_KINDS and record.load:
                record.metrics_probe = await asyncio.to_thread(deployment.main.probe_metrics)
            record.exit_code = await asyncio.to_thread(deployment.stop)
            record.log = deployment_findings(deployment.servers)
            server = deployment.main
            if server.kind in PARLEY_KINDS and record.load:
                try:
                    record.stored = await stored_by_parley(server, pg, record.load)
                except Exception as exc:  # report it; the run's numbers still stand
                    record.stored = {"error": repr(exc)}
            for each in deployment.servers:
                shutil.rmtree(each.workdir, ignore_errors=True)
    finally:
        if pg is not None:
            await databases.drop_database(pg)
