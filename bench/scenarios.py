"""The scenarios of issue #4 and their settings, full and ``--quick``. Each case runs the floor, then Parley.

A case's ``load`` is handed to the generator as it is (``bench.loadgen.Spec`` fields), so the report can
print exactly what was run. A scenario's ``parley_env`` is passed to the Parley server of that scenario only,
over the bench's settings and ``--parley-env`` (the report prints it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

PACED_DELAY_MS = 1000 / 30  # 30 deltas per second
COALESCE_MS = 20  # the coalescing window of the `coalesce` scenario (PARLEY_COALESCE_MS)
CUSTOMERS = 16  # connections use these many customers' tokens, round robin
RESUME_EVENTS = 2000  # deltas of the turns the `resume` scenario replays

Database = Literal["sqlite", "postgres"]


@dataclass(frozen=True)
class Case:
    label: str
    level: int  # the x value in charts: streams, connections, ...
    load: dict[str, Any]
    servers: tuple[str, ...] | None = None  # only these of the scenario's servers run this case
    repeats: int = 1  # run the servers in turn this many times (each time with fresh servers)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    what: str
    cases: list[Case]
    database: Database = "sqlite"
    servers: tuple[str, ...] = ("floor", "parley")
    notes: list[str] = field(default_factory=list)
    parley_env: dict[str, str] = field(default_factory=dict)  # for this scenario's Parley server only
    profiled: bool = True  # with --profile, py-spy samples this scenario's Parley runs

    def servers_for(self, case: Case) -> tuple[str, ...]:
        """The servers that run ``case``, in order: the scenario's, or the case's own subset of them."""
        if case.servers is None:
            return self.servers
        return tuple(kind for kind in self.servers if kind in case.servers)


def _stream(connections: int, **load: Any) -> dict[str, Any]:
    return {"mode": "stream", "connections": connections, **load}


def single(quick: bool) -> Scenario:
    """200-delta turns (the issue's case); a full run adds 20-delta turns to split fixed from per-delta."""
    lengths = [20] if quick else [200, 20]
    timing = {"warmup_s": 0.5, "measure_s": 2.0} if quick else {"warmup_s": 1.0, "measure_s": 6.0}
    cases = [Case(f"{n} deltas", n, _stream(1, chunks=n, start_spread_s=0.0, **timing)) for n in lengths]
    return Scenario(
        "single",
        "Single stream",
        "One connection; turns back to back for the whole window (a new session every 5 turns).",
        cases,
    )


def sweep(quick: bool) -> Scenario:
    levels = [10, 50] if quick else [10, 100, 500, 1000]
    timing = {"warmup_s": 1.0, "measure_s": 2.0} if quick else {"warmup_s": 3.0, "measure_s": 8.0}
    cases = [Case(f"{n} streams", n, _stream(n, chunks=200, start_spread_s=1.0, **timing)) for n in levels]
    return Scenario(
        "sweep",
        "Concurrency sweep, unpaced",
        "N connections, each running 200-delta turns back to back as fast as the server sends them.",
        cases,
    )


def coalesce(quick: bool) -> Scenario:
    """The sweep's 100-stream case with Parley merging deltas into fewer frames; the floor sends every delta
    as its own frame, as always."""
    n = 50 if quick else 100
    timing = {"warmup_s": 1.0, "measure_s": 2.0} if quick else {"warmup_s": 3.0, "measure_s": 8.0}
    return Scenario(
        "coalesce",
        f"Unpaced, {n} streams, Parley coalescing deltas ({COALESCE_MS} ms)",
        f"The sweep's case again with Parley run with `PARLEY_COALESCE_MS={COALESCE_MS}` (this scenario "
        "only): deltas arriving within the window of the last text event are merged into one event. The "
        "floor does not coalesce: every delta is its own frame.",
        [Case(f"{n} streams", n, _stream(n, chunks=200, start_spread_s=1.0, **timing))],
        parley_env={"PARLEY_COALESCE_MS": str(COALESCE_MS)},
    )


def sweep_postgres(quick: bool) -> Scenario:
    """The sweep's 100-stream case with Parley on PostgreSQL, beside Parley on SQLite in the same run: how
    much of the time to first text is SQLite's."""
    n = 50 if quick else 100
    timing = {"warmup_s": 1.0, "measure_s": 2.0} if quick else {"warmup_s": 3.0, "measure_s": 8.0}
    return Scenario(
        "sweep-postgres",
        f"Unpaced, {n} streams, Parley on PostgreSQL",
        "The sweep's case again with Parley on PostgreSQL, and on SQLite (`sqlite`) back to back with it, "
        "so the two times to first text are of the same run (the floor has no database: see the sweep).",
        [Case(f"{n} streams", n, _stream(n, chunks=200, start_spread_s=1.0, **timing))],
        database="postgres",
        servers=("sqlite", "parley"),
    )


def paced(quick: bool) -> Scenario:
    levels = [10, 50] if quick else [10, 100, 250, 500, 750, 1000]
    if quick:
        load = {"chunks": 30, "start_spread_s": 1.0, "warmup_s": 1.5, "measure_s": 2.5}
    else:
        load = {"chunks": 150, "start_spread_s": 5.0, "warmup_s": 6.0, "measure_s": 10.0}
    cases = [Case(f"{n} streams", n, _stream(n, delay_ms=PACED_DELAY_MS, **load)) for n in levels]
    return Scenario(
        "paced",
        "Concurrency sweep, paced at 30 deltas/s",
        "N connections, each running turns whose deltas the model paces at 30/s; starts spread over a turn.",
        cases,
    )


def cancel(quick: bool) -> Scenario:
    n = 20 if quick else 100
    timing = {"warmup_s": 1.0, "measure_s": 3.0} if quick else {"warmup_s": 2.0, "measure_s": 15.0}
    load = _stream(n, chunks=200, cancel_fraction=0.1, start_spread_s=1.0, **timing)
    return Scenario(
        "cancel",
        f"Cancel under load, {n} streams",
        "Unpaced 200-delta turns; 10% of turns are cancelled after a random number of deltas (1–198).",
        [Case(f"{n} streams", n, load)],
    )


def idle(quick: bool) -> Scenario:
    n = 300 if quick else 5000
    if quick:
        load = {"idle_steps": 3, "settle_s": 0.5, "hold_s": 1.0}
    else:
        load = {"idle_steps": 5, "settle_s": 1.5, "hold_s": 3.0}
    return Scenario(
        "idle",
        f"{n:,} idle connections",
        "One short turn first (warm-up), then connections opened in steps and held; server RSS after each.",
        [Case(f"{n} connections", n, {"mode": "idle", "connections": n, **load})],
    )


def persist(quick: bool, database: Database) -> Scenario:
    n = 10 if quick else 50
    timing = {"warmup_s": 1.0, "measure_s": 2.0} if quick else {"warmup_s": 2.0, "measure_s": 10.0}
    load = _stream(
        n,
        chunks=1,
        delta_chars=32,
        start_spread_s=0.2,
        watch_postgres=database == "postgres",
        **timing,
    )
    name = "SQLite" if database == "sqlite" else "PostgreSQL"
    return Scenario(
        f"persist-{database}",
        f"Persisted turns per second, {name}",
        f"{n} connections sending one-delta turns back to back (a new session every 5 turns).",
        [Case(f"{n} connections", n, load)],
        database=database,
    )


def slow(quick: bool) -> Scenario:
    load: dict[str, Any] = {
        "mode": "slow",
        "connections": 3 if quick else 20,  # paced bystanders
        "chunks": 30 if quick else 150,
        "delay_ms": PACED_DELAY_MS,
        "start_spread_s": 1.0,
        "slow_clients": 5 if quick else 16,
        "slow_requests": 6,  # one turn runs, five wait: ~5.4 MB to send, more than the kernel buffers
        "slow_chunks": 300 if quick else 900,
        "slow_delta_chars": 1000,
        "slow_read_events": 5,
        "hold_s": 4.0,
        "warmup_s": 2.0,
        "measure_s": 5.0 if quick else 30.0,
    }
    return Scenario(
        "slow",
        "Slow readers",
        "Each slow client sends 6 requests for big unpaced answers (one runs, five queue), reads 5 events, "
        "stops reading for 4 s, drops the connection and starts over; paced bystander streams run beside "
        "them. Server RSS sampled every 0.25 s.",
        [Case(f"{load['slow_clients']} slow clients", int(load["slow_clients"]), load)],
    )


def _cpu_cases(n: int, quick: bool, repeats: int) -> list[Case]:
    """CPU per delta, two servers side by side: a single stream of 200-delta turns, and ``n`` unpaced
    streams, each run ``repeats`` times over (fresh servers each time)."""
    single_timing = {"warmup_s": 0.5, "measure_s": 2.0} if quick else {"warmup_s": 1.0, "measure_s": 6.0}
    return [
        Case(
            "1 stream, 200 deltas",
            1,
            _stream(1, chunks=200, start_spread_s=0.0, **single_timing),
            repeats=repeats,
        ),
        Case(
            f"{n} streams",
            n,
            _stream(n, chunks=200, start_spread_s=1.0, **_sweep_timing(quick)),
            repeats=repeats,
        ),
    ]


def _sweep_timing(quick: bool) -> dict[str, float]:
    return {"warmup_s": 1.0, "measure_s": 2.0} if quick else {"warmup_s": 3.0, "measure_s": 8.0}


def resume(quick: bool) -> Scenario:
    """Turn event logs (parley/streams.py), three ways: CPU per delta beside the code before them, resume
    latency and replay rate, and memory per retained ended turn."""
    n = 50 if quick else 100
    replay: dict[str, Any] = {
        "mode": "resume",
        "connections": 4,  # the resuming connections (same customer as the one that ran the turn)
        "chunks": RESUME_EVENTS,
        "resume_turns": 2 if quick else 5,  # unpaced turns run live, then each resumed in turn
        "resumes": 20 if quick else 200,
        "midturn_turns": 1 if quick else 2,  # paced turns resumed while they stream
        "midturn_resumes": 3 if quick else 10,
        "midturn_delay_ms": 1.0 if quick else 2.0,
        "budget_s": 30.0 if quick else 60.0,
    }
    phases = [[100, 200], [8, RESUME_EVENTS]] if quick else [[500, 200], [48, RESUME_EVENTS]]
    retain: dict[str, Any] = {
        "mode": "retain",
        "connections": 4,
        "retain_phases": phases,
        "settle_s": 0.5 if quick else 1.5,
        "budget_s": 30.0 if quick else 90.0,
    }
    repeats = 1 if quick else 5  # the CPU cases: the target's 10% is within one run's noise here
    cases = [
        *_cpu_cases(n, quick, repeats),
        Case(f"resume a {RESUME_EVENTS:,}-delta turn", RESUME_EVENTS, replay, servers=("parley",)),
        Case(f"{phases[0][0]} ended turns kept", phases[0][0], retain, servers=("baseline", "parley")),
    ]
    return Scenario(
        "resume",
        "Resume: turn event logs",
        "Every event of a turn goes into its log before a connection sees it. (1) CPU per delta: single "
        f"stream 200-delta turns and {n} unpaced streams, on the floor, on Parley before the logs "
        "(`baseline`, `--baseline-rev`) and on Parley, back to back"
        + (f", {repeats} times over (fresh servers each time)" if repeats > 1 else "")
        + ". (2) Resume: a connection runs an "
        f"unpaced {RESUME_EVENTS:,}-delta turn, then another connection of the same customer sends "
        "`resume` with `after_seq: -1`, over and over, one at a time; and turns paced at "
        f"`delay_ms` are resumed from fresh connections while they stream. (3) Memory: ended turns run "
        "back to back and kept (the TTL is 600 s), on the baseline and on Parley: server RSS growth per "
        "turn beside what the log accounts. Not profiled with `--profile` (py-spy would share the "
        "generator's core during a side-by-side comparison).",
        cases,
        servers=("floor", "baseline", "parley"),
        profiled=False,
    )


def scaleout(quick: bool) -> Scenario:
    """Redis scale-out (parley/cluster/), all on PostgreSQL: (1) CPU per delta with ``PARLEY_REDIS_URL``
    ÷ without it; (2) deltas/s of 2 processes ÷ 1; (3) cancel and resume sent on the process that does not
    run the turn."""
    n, wide = (50, 100) if quick else (100, 200)
    single_timing = {"warmup_s": 0.5, "measure_s": 2.0} if quick else {"warmup_s": 1.0, "measure_s": 6.0}
    sweep_timing = {"warmup_s": 1.0, "measure_s": 2.0} if quick else {"warmup_s": 3.0, "measure_s": 8.0}
    remote_timing = {"warmup_s": 1.0, "measure_s": 3.0} if quick else {"warmup_s": 2.0, "measure_s": 12.0}
    repeats = 1 if quick else 5  # the CPU cases: take each server's lowest of the repeats, as `resume` does
    wide_repeats = 1 if quick else 3
    streams = {"chunks": 200, "start_spread_s": 1.0, "watch_postgres": True}
    cases = [
        Case(
            "1 stream, 200 deltas",
            1,
            _stream(1, chunks=200, start_spread_s=0.0, watch_postgres=True, **single_timing),
            servers=("parley", "redis"),
            repeats=repeats,
        ),
        Case(f"{n} streams", n, _stream(n, **streams, **sweep_timing), ("parley", "redis"), repeats),
        Case(
            f"{wide} streams, over the processes",
            wide,
            _stream(wide, spread=True, **streams, **sweep_timing),
            servers=("redis", "cluster"),
            repeats=wide_repeats,
        ),
        Case(
            f"{n} streams, cancels on the other process",
            n,
            _stream(n, cancel_fraction=0.1, remote_action="cancel", **streams, **remote_timing),
            servers=("cluster",),
        ),
        Case(
            f"{n} streams, resumes on the other process",
            n,
            _stream(n, remote_action="resume", remote_fraction=0.1, **streams, **remote_timing),
            servers=("cluster",),
        ),
    ]
    return Scenario(
        "scaleout",
        "Scale-out: Redis and several processes",
        "Parley on PostgreSQL throughout, so only Redis and the process count differ. `parley`: one "
        "process without Redis; `redis`: one process with `PARLEY_REDIS_URL` (a `redis-server` of the "
        "run's own, fresh each run, unpinned); `cluster`: two processes sharing the database, Redis and "
        "the JWT secret, the first on the server's core and the second on the generator's (this machine "
        "has two). (1) CPU per delta, `redis` ÷ `parley`: single stream 200-delta turns and "
        f"{n} unpaced streams, back to back"
        + (f", {repeats} times over (fresh servers each time)" if repeats > 1 else "")
        + f". (2) {wide} unpaced streams, `cluster` (connections round robin over both processes) ÷ "
        f"`redis`. (3) {n} unpaced streams on the first process, each with a second connection of the "
        "same customer to the second process: 10% of the turns are cancelled at a random delta by a "
        "`cancel` sent there (`cancelled` arrives on the first); or 10% are resumed there with "
        "`after_seq: -1` at a random delta, and followed to their end. Not profiled with `--profile`.",
        cases,
        database="postgres",
        servers=("parley", "redis", "cluster"),
        profiled=False,
    )


def metrics(quick: bool) -> Scenario:
    """Prometheus metrics (parley/metrics.py, issue #15): CPU per delta of Parley with them on (its default)
    ÷ with ``PARLEY_METRICS=false``, on SQLite, side by side in one run."""
    n = 50 if quick else 100
    repeats = 1 if quick else 5  # take each server's lowest of the repeats, as `resume` and `scaleout` do
    cases = _cpu_cases(n, quick, repeats)
    return Scenario(
        "metrics",
        "Metrics: Prometheus on and off",
        "Parley on SQLite with its Prometheus metrics on (`parley`, the default: every turn, connection and "
        "database write recorded, text deltas counted) and with `PARLEY_METRICS=false` (`nometrics`: "
        "nothing recorded, no `GET /metrics`), the same code otherwise. CPU per delta, metrics on ÷ off: "
        f"single stream 200-delta turns and {n} unpaced streams, the two servers back to back"
        + (f", {repeats} times over (fresh servers each time)" if repeats > 1 else "")
        + ". Nobody scrapes during the window; after it the harness reads `GET /metrics` once (200 with "
        "the deltas counted when on, 404 when off). Not profiled with `--profile` (py-spy would share the "
        "generator's core during a side-by-side comparison).",
        cases,
        servers=("nometrics", "parley"),
        profiled=False,
    )


SCENARIOS = (
    "single",
    "sweep",
    "coalesce",
    "sweep-postgres",
    "paced",
    "cancel",
    "idle",
    "persist-sqlite",
    "persist-postgres",
    "slow",
    "resume",
    "scaleout",
    "metrics",
)


def build(name: str, quick: bool) -> Scenario:
    if name.startswith("persist-"):
        database: Database = "postgres" if name == "persist-postgres" else "sqlite"
        return persist(quick, database)
    builders = {
        "single": single,
        "sweep": sweep,
        "coalesce": coalesce,
        "sweep-postgres": sweep_postgres,
        "paced": paced,
        "cancel": cancel,
        "idle": idle,
        "slow": slow,
        "resume": resume,
        "scaleout": scaleout,
        "metrics": metrics,
    }
    return builders[name](quick)


def plan(names: list[str], quick: bool) -> list[Scenario]:
    return [build(name, quick) for name in names]
