"""The benchmark's one command: every scenario, floor then Parley, a live progress line, then the report.

    .venv/bin/python -m bench.run [--quick] [--scenario NAME ...] [--out DIR] [--no-charts] [--profile]

Writes ``report.md``, ``results.json`` and PNG charts to ``--out`` (and, with ``--profile``, py-spy's raw
stacks to ``--out``/profiles). ``--report-from results.json`` renders the report and charts again from a
saved run without measuring anything. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import databases
from bench.harness import Context, Live, RunRecord, run_case
from bench.machine import describe, git_revision
from bench.metrics import raise_nofile_limit
from bench.profiling import PROFILE_DIR, RATE_HZ, ProfileSetup, find_py_spy, py_spy_version
from bench.report import render
from bench.results import ms, num, rate, size, us, value
from bench.scenarios import SCENARIOS, Scenario, plan
from bench.servers import DEFAULT_BASELINE_REV, REPO, ParleySource, export_revision

REQUIREMENTS = REPO / "bench" / "requirements.txt"
DEFAULT_OUT = REPO / "bench" / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="Parley against the floor.")
    parser.add_argument(
        "--quick", action="store_true", help="small counts, short windows: checks the harness"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"one of {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the report goes (bench/results)")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts (and matplotlib)")
    parser.add_argument(
        "--profile", action="store_true", help="sample Parley with py-spy in each measuring window"
    )
    parser.add_argument("--server-core", type=int, help="core for the servers (default: the first usable)")
    parser.add_argument("--generator-core", type=int, help="core for the generator (default: the next one)")
    parser.add_argument(
        "--parley-rev", metavar="REV", help="run Parley as of this git revision (default: the working tree)"
    )
    parser.add_argument(
        "--baseline-rev",
        default=DEFAULT_BASELINE_REV,
        metavar="REV",
        help=f"the Parley the `resume` scenario compares with, side by side (default {DEFAULT_BASELINE_REV})",
    )
    parser.add_argument(
        "--parley-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra Parley setting, e.g. PARLEY_COALESCE_MS=20 (the report lists it)",
    )
    parser.add_argument("--report-from", type=Path, metavar="RESULTS_JSON", help="only render a saved run")
    return parser.parse_args(argv)


def choose_cores(args: argparse.Namespace) -> tuple[set[int], set[int]]:
    usable = sorted(os.sched_getaffinity(0))
    server = args.server_core if args.server_core is not None else usable[0]
    others = [c for c in usable if c != server]
    if args.generator_core is not None:
        return {server}, {args.generator_core}
    if not others:
        print("bench: only one usable core: server and generator share it; the figures mean less", flush=True)
        return {server}, {server}
    return {server}, {others[0]}


def profiler_cores(usable: set[int], server: set[int], generator: set[int]) -> set[int]:
    """A core of its own for py-spy if there is one to spare, else the generator's: never the server's."""
    spare = usable - server - generator
    return {min(spare)} if spare else generator


def profile_setup(out: Path, cores: set[int]) -> tuple[ProfileSetup | None, dict[str, Any]]:
    """For ``--profile``: where py-spy is and where its raw stacks go (emptied of an earlier run's), and
    what the report says about it. Without py-spy the run goes on, unprofiled, and the report says why."""
    py_spy = find_py_spy()
    if py_spy is None:
        problem = f"py-spy is not installed beside {sys.executable} nor on PATH (pip install 'py-spy>=0.4')"
        print(f"bench: --profile: {problem}; measuring without a profile", flush=True)
        return None, {"py_spy": None, "problem": problem}
    directory = out / PROFILE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.txt"):
        old.unlink()
    meta = {"py_spy": py_spy_version(py_spy), "rate_hz": RATE_HZ, "cores": sorted(cores)}
    return ProfileSetup(py_spy, directory, cores), meta


def parley_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        key, sep, val = pair.partition("=")
        if not sep or not key.startswith("PARLEY_"):
            raise SystemExit(f"bench: --parley-env wants PARLEY_NAME=VALUE, not {pair!r}")
        settings[key] = val
    return settings


def parley_source(args: argparse.Namespace, scratch: Path) -> ParleySource:
    if args.parley_rev:
        return export_revision(args.parley_rev, scratch / "parley-src")
    return ParleySource(None, f"working tree at {git_revision(REPO)}")


def baseline_source(
    args: argparse.Namespace, scenarios: list[Scenario], scratch: Path
) -> ParleySource | None:
    """The ``--baseline-rev`` export, when a planned case runs a baseline server."""
    if not any("baseline" in s.servers_for(c) for s in scenarios for c in s.cases):
        return None
    source = export_revision(args.baseline_rev, scratch / "baseline-src")
    return ParleySource(source.path, source.description.replace("--parley-rev", "--baseline-rev"))


def ensure_matplotlib() -> bool:
    """Install bench/requirements.txt into this Python if matplotlib is missing, saying so."""
    if importlib.util.find_spec("matplotlib") is not None:
        return True
    print(f"bench: matplotlib is missing; installing {REQUIREMENTS.relative_to(REPO)} into {sys.executable}")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)]
    if subprocess.run(command, check=False).returncode != 0:
        print("bench: could not install matplotlib; the report will have no charts")
        return False
    importlib.invalidate_caches()
    return importlib.util.find_spec("matplotlib") is not None


async def postgres_problem() -> tuple[str | None, str | None]:
    """(version, None) when the bench's PostgreSQL answers, else (None, why not)."""
    try:
        return await databases.postgres_version(), None
    except Exception as exc:  # unreachable, refused, bad credentials: the PostgreSQL scenario is skipped
        return None, f"PostgreSQL at {databases.ADMIN_DSN.split('@')[-1]} is not reachable ({exc!r})"


def summary_line(record: RunRecord) -> str:
    if record.skipped:
        return f"skipped: {record.skipped}"
    if not record.ok:
        return f"FAILED: {(record.failure or 'no result').splitlines()[0][:150]}"
    mode = record.load.get("mode")
    parts = [f"{record.wall_s:4.1f}s"]
    if mode == "idle":
        parts += [f"per connection {size(value(record, 'per_connection_bytes'))}"]
    elif mode == "slow":
        peak = max((r for _, r in record.load.get("rss", [])), default=math.nan)
        parts += [f"peak RSS {size(float(peak))}", f"bystander gap p99 {ms(value(record, 'gap_ms', 'p99'))}"]
    elif mode == "resume":
        ended, midturn = record.load.get("ended", {}), record.load.get("midturn", {})
        parts += [
            f"live deltas/s {rate(value(record, 'live', 'deltas_per_s', 'p50'))}",
            f"first replayed p50 {ms(value(record, 'ended', 'first_ms', 'p50'))}",
            f"replay {rate(value(record, 'ended', 'events_per_s', 'p50'))}",
            f"mid-turn first p50 {ms(value(record, 'midturn', 'first_ms', 'p50'))}",
            f"resumes {ended.get('resumes', 0)} + {midturn.get('resumes', 0)}",
        ]
    elif mode == "retain":
        for phase in record.load.get("phases", []):
            parts.append(
                f"{phase['turns']}×{phase['deltas']}: RSS {size(float(phase['slope_bytes']))}/turn"
                f" (log {size(float(phase['accounted_per_turn']))})"
            )
    elif record.scenario.startswith("persist"):
        parts += [
            f"turns/s {rate(value(record, 'turns_per_s'))}",
            f"turn p50 {ms(value(record, 'turn_ms', 'p50'))}",
        ]
    else:
        parts += [
            f"deltas/s {rate(value(record, 'deltas_per_s'))}",
            f"CPU/delta {us(value(record, 'server_cpu_per_delta_us'))}",
            f"first text p50 {ms(value(record, 'ttft_ms', 'p50'))}",
        ]
        if value(record, "deltas_per_frame") > 1:  # coalesced: fewer, bigger text events
            parts.append(
                f"frames/s {rate(value(record, 'frames_per_s'))}"
                f" ({value(record, 'deltas_per_frame'):.1f} deltas/frame)"
            )
        if "cancel" in record.load:
            parts.append(f"cancel p50 {ms(value(record, 'cancel', 'latency_ms', 'p50'))}")
        if "remote_resume" in record.load:
            first = value(record, "remote_resume", "first_ms", "p50")
            parts.append(
                f"resume first p50 {ms(first)} ({num(value(record, 'remote_resume', 'resumes'), 0)})"
            )
    parts += [
        f"generator CPU {value(record, 'gen_cpu_pct'):.0f}%",
        f"errors {int(value(record, 'error_total'))}",
    ]
    return "  ".join(parts)


def describe_plan(scenarios: list[Scenario]) -> dict[str, Any]:
    return {
        s.name: {
            "title": s.title,
            "what": s.what,
            "cases": [
                {
                    "label": c.label,
                    "level": c.level,
                    "load": c.load,
                    "servers": list(s.servers_for(c)),
                    "repeats": c.repeats,
                }
                for c in s.cases
            ],
            "parley_env": s.parley_env,
        }
        for s in scenarios
    }


def run_order(servers: tuple[str, ...], repeat: int) -> tuple[str, ...]:
    """The servers of one run of a case: the floor first, then the others, reversed every other repeat,
    so a machine that slows down as a run goes on (heat, CPU credits) cannot favour whichever comes first."""
    rest = [k for k in servers if k != "floor"]
    if repeat % 2:
        rest.reverse()
    return tuple(k for k in servers if k == "floor") + tuple(rest)


async def measure(scenarios: list[Scenario], ctx: Context, pg_problem: str | None) -> list[RunRecord]:
    """Every case of every scenario, each server in turn (the floor first), with a live line for each."""
    runs = [
        (s, c, repeat, kind)
        for s in scenarios
        for c in s.cases
        for repeat in range(c.repeats)
        for kind in run_order(s.servers_for(c), repeat)
    ]
    records = []
    for index, (scenario, case, repeat, kind) in enumerate(runs, start=1):
        again = f" · run {repeat + 1}/{case.repeats}" if case.repeats > 1 else ""
        ctx.live.begin(index, f"{scenario.name} · {case.label} · {kind}{again}")
        if scenario.database == "postgres" and pg_problem:
            record = RunRecord(scenario.name, case.label, case.level, kind, "postgres", skipped=pg_problem)
        else:
            record = await run_case(scenario, case, kind, ctx)
        record.repeat = repeat
        ctx.live.end(summary_line(record))
        records.append(record)
    return records


def write_outputs(
    out: Path, records: list[RunRecord], machine: dict[str, Any], meta: dict[str, Any], charts: bool
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    drawn: list[tuple[str, str]] = []
    if charts:
        from bench.charts import CHART_FILES as chart_files
        from bench.charts import draw

        for name in chart_files:
            (out / name).unlink(missing_ok=True)
        drawn = draw(records, out)
    results = {"meta": meta, "machine": machine, "records": [asdict(r) for r in records]}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    report = out / "report.md"
    report.write_text(render(records, machine, meta, drawn))
    return report


def rerender(args: argparse.Namespace) -> int:
    saved = json.loads(args.report_from.read_text())
    records = [RunRecord(**r) for r in saved["records"]]
    out = args.out if args.out != DEFAULT_OUT else args.report_from.parent
    charts = not args.no_charts and ensure_matplotlib()
    print(f"bench: report written to {write_outputs(out, records, saved['machine'], saved['meta'], charts)}")
    return 0


async def main_async(args: argparse.Namespace, argv: list[str], charts: bool) -> int:
    server_cores, generator_cores = choose_cores(args)
    extra_env = parley_settings(args.parley_env)
    profile, profile_meta = None, None
    if args.profile:
        cores = profiler_cores(os.sched_getaffinity(0), server_cores, generator_cores)
        profile, profile_meta = profile_setup(args.out, cores)
    pg_version, pg_problem = await postgres_problem()
    scenarios = plan(args.scenario or list(SCENARIOS), args.quick)
    started, clock = datetime.now().astimezone(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as scratch:
        source = parley_source(args, Path(scratch))
        baseline = baseline_source(args, scenarios, Path(scratch))
        machine = describe(source.description, pg_version)  # before pinning: it lists the usable cores
        if baseline is not None:
            machine["baseline_revision"] = baseline.description
        os.sched_setaffinity(
            0, generator_cores
        )  # the harness only reads /proc: it shares the generator's core
        live = Live(sum(len(s.servers_for(c)) * c.repeats for s in scenarios for c in s.cases))
        ctx = Context(server_cores, generator_cores, Path(scratch), live, source, extra_env, profile)
        ctx.baseline = baseline
        records = await measure(scenarios, ctx, pg_problem)
    meta = {
        "command": "python -m bench.run " + " ".join(argv),
        "quick": args.quick,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        "duration_s": time.monotonic() - clock,
        "server_cores": sorted(server_cores),
        "generator_cores": sorted(generator_cores),
        "parley_env": extra_env,
        "scenarios": describe_plan(scenarios),
    }
    if profile_meta is not None:
        meta["profile"] = profile_meta
    report = write_outputs(args.out, records, machine, meta, charts)
    failed = [r for r in records if r.failure]
    print(f"bench: report written to {report}" + (f" ({len(failed)} runs failed)" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.report_from:
        return rerender(args)
    charts = not args.no_charts and ensure_matplotlib()  # before measuring, not after
    raise_nofile_limit()
    return asyncio.run(main_async(args, argv, charts))


if __name__ == "__main__":
    sys.exit(main())
