"""The Markdown report: targets first (met, or missed by how much), then each scenario, floor beside Parley.

Everything is computed from the run records (``results.json``), so a report can be rendered again from a
saved run: ``python -m bench.run --report-from bench/results/results.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.harness import RunRecord
from bench.profiling import BUCKETS, bucket_group
from bench.results import (
    GENERATOR_BOUND_PCT,
    NAMES,
    PACED_RATE,
    Results,
    errors_of,
    limit_of,
    ms,
    num,
    pct,
    rate,
    ratio,
    size,
    table,
    times,
    us,
    value,
)
from bench.servers import PARLEY_BENCH_SETTINGS
from bench.targets import (
    LOG_CPU_LIMIT,
    METRICS_CPU_LIMIT,
    REDIS_CPU_LIMIT,
    REMOTE_MS,
    SCALE_LIMIT,
    best_of_each,
    fine_times,
    machine_cpu_pct,
    median,
    metrics_cpu_levels,
    metrics_probes,
    paired,
    rss_growth,
    scaleout_cpu_levels,
    scaleout_wide_level,
    verdicts,
)

NOISY_OTHER_PCT = 10.0
KNEE_DELIVERED = 0.95
KNEE_GAP_MS = 100.0
METHOD = Path(__file__).with_name("method.md")
FINDINGS = Path(__file__).with_name("findings.md")
PROFILE_MARK = "<!-- PROFILE: to be filled in by the profiling part of issue #4 -->"
MINOR_BUCKET_PCT = 1.0


def scenario_env(meta: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The scenarios that set Parley settings of their own (over the run's), with those settings."""
    scenarios = meta.get("scenarios") or {}
    return {name: dict(s["parley_env"]) for name, s in scenarios.items() if s.get("parley_env")}


def run_coalesce(meta: dict[str, Any]) -> str:
    """The run's coalescing window: the bench's setting, or ``--parley-env``'s."""
    extra = meta.get("parley_env") or {}
    return str(extra.get("PARLEY_COALESCE_MS", PARLEY_BENCH_SETTINGS["PARLEY_COALESCE_MS"]))


def section_targets(res: Results, meta: dict[str, Any]) -> list[str]:
    extra = meta.get("parley_env") or {}
    coalesce = run_coalesce(meta)
    if float(coalesce) == 0:
        how = f"Parley ran with `PARLEY_COALESCE_MS={coalesce}`: coalescing off, every delta is its own frame"
        own = [
            f"the `{name}` scenario, which sets `PARLEY_COALESCE_MS={env['PARLEY_COALESCE_MS']}` for its "
            "own Parley runs only (see its section)"
            for name, env in scenario_env(meta).items()
            if "PARLEY_COALESCE_MS" in env and float(env["PARLEY_COALESCE_MS"]) != 0
        ]
        how += f", except in {' and '.join(own)}." if own else "."
    else:
        how = (
            f"**Parley ran with `PARLEY_COALESCE_MS={coalesce}`: coalescing on**, so Parley sends fewer, "
            'bigger text events than the floor ("deltas" below still count the model\'s deltas: text '
            "characters ÷ delta size); the coalescing-off targets do not apply to this run."
        )
    lines = ["## Targets", "", f"Measured, not asserted. {how}", ""]
    if extra:
        lines += [
            "Extra Parley settings of this run: " + ", ".join(f"`{k}={v}`" for k, v in extra.items()),
            "",
        ]
    lines += table(
        ["target", "measured (Parley vs floor)", "verdict", "missed by"], (v.row() for v in verdicts(res))
    )
    return lines


def section_single(res: Results) -> list[str]:
    levels = sorted(res.levels("single"), reverse=True)
    if not levels:
        return []
    header = [
        "turn",
        "server",
        "turns",
        "`working` p50 / p99",
        "first `text` p50 / p99",
        "deltas/s",
        "server CPU / delta",
        "server CPU / turn",
        "server CPU",
        "generator CPU",
    ]
    rows = []
    for n in levels:
        floor, parley = res.pair("single", n)
        for name, rec in (("floor", floor), ("Parley", parley)):
            rows.append([f"{n} deltas", name, *single_cells(rec)])
        cpu = ratio(value(parley, "server_cpu_per_delta_us"), value(floor, "server_cpu_per_delta_us"))
        added = value(parley, "ttft_ms", "p50") - value(floor, "ttft_ms", "p50")
        speed = ratio(value(parley, "deltas_per_s"), value(floor, "deltas_per_s"))
        rows.append(
            [
                f"{n} deltas",
                "Parley ÷ floor",
                "",
                "",
                f"+{ms(added)} (p50)",
                times(speed),
                times(cpu),
                "",
                "",
                "",
            ]
        )
    return [
        "## Single stream",
        "",
        *scenario_intro(res, "single"),
        *table(header, rows),
        *cost_split(res, levels),
    ]


def single_cells(rec: RunRecord | None) -> list[str]:
    return [
        num(value(rec, "completed_window"), 0),
        f"{ms(value(rec, 'ttw_ms', 'p50'))} / {ms(value(rec, 'ttw_ms', 'p99'))}",
        f"{ms(value(rec, 'ttft_ms', 'p50'))} / {ms(value(rec, 'ttft_ms', 'p99'))}",
        rate(value(rec, "deltas_per_s")),
        us(value(rec, "server_cpu_per_delta_us")),
        us(value(rec, "server_cpu_per_turn_us")),
        pct(value(rec, "server_cpu_pct")),
        pct(value(rec, "gen_cpu_pct")),
    ]


def cost_split(res: Results, levels: list[int]) -> list[str]:
    """From two turn lengths: server CPU per turn = fixed cost + deltas × cost per delta."""
    if len(levels) < 2:
        return []
    long, short = levels[0], levels[-1]
    parts = []
    for server in ("floor", "parley"):
        a = value(res.find("single", server, long), "server_cpu_per_turn_us")
        b = value(res.find("single", server, short), "server_cpu_per_turn_us")
        per_delta = (a - b) / (long - short)
        parts.append(f"{NAMES[server]} {us(b - short * per_delta)} per turn + {us(per_delta)} per delta")
    return [
        f"Server CPU per turn split into a fixed part and a part per delta (from the {short}- and "
        f"{long}-delta turns): {'; '.join(parts)}.",
        "",
    ]


def scenario_intro(res: Results, name: str) -> list[str]:
    what = res.descriptions.get(name, "")
    return [what, ""] if what else []


def section_sweep(res: Results) -> list[str]:
    levels = res.levels("sweep")
    if not levels:
        return []
    head = [
        "streams",
        "deltas/s floor",
        "deltas/s Parley",
        "ratio",
        "CPU/delta floor",
        "CPU/delta Parley",
        "ratio",
        "server CPU floor / Parley",
        "generator CPU floor / Parley",
        "limited by (floor / Parley)",
        "errors floor / Parley",
    ]
    rows, lat = [], []
    for n in levels:
        f, p = res.pair("sweep", n)
        rows.append(
            [
                f"{n:,}",
                rate(value(f, "deltas_per_s")),
                rate(value(p, "deltas_per_s")),
                times(ratio(value(p, "deltas_per_s"), value(f, "deltas_per_s"))),
                us(value(f, "server_cpu_per_delta_us")),
                us(value(p, "server_cpu_per_delta_us")),
                times(ratio(value(p, "server_cpu_per_delta_us"), value(f, "server_cpu_per_delta_us"))),
                f"{pct(value(f, 'server_cpu_pct'))} / {pct(value(p, 'server_cpu_pct'))}",
                f"{pct(value(f, 'gen_cpu_pct'))} / {pct(value(p, 'gen_cpu_pct'))}",
                f"{limit_of(f)} / {limit_of(p)}",
                f"{errors_of(f)} / {errors_of(p)}",
            ]
        )
        lat.append(
            [
                f"{n:,}",
                f"{ms(value(f, 'ttft_ms', 'p50'))} / {ms(value(p, 'ttft_ms', 'p50'))}",
                f"{ms(value(f, 'ttft_ms', 'p99'))} / {ms(value(p, 'ttft_ms', 'p99'))}",
                f"+{ms(value(p, 'ttft_ms', 'p50') - value(f, 'ttft_ms', 'p50'))} / "
                f"+{ms(value(p, 'ttft_ms', 'p99') - value(f, 'ttft_ms', 'p99'))}",
                f"{ms(value(f, 'ttw_ms', 'p50'))} / {ms(value(p, 'ttw_ms', 'p50'))}",
                f"{ms(value(f, 'gap_ms', 'p99'))} / {ms(value(p, 'gap_ms', 'p99'))}",
                num(value(p, "ttft_ms", "n"), 0),
            ]
        )
    lat_head = [
        "streams",
        "first `text` p50 floor / Parley",
        "p99 floor / Parley",
        "added by Parley p50 / p99",
        "`working` p50 floor / Parley",
        "gap p99 floor / Parley",
        "turns sampled (Parley)",
    ]
    return [
        "## Concurrency sweep, unpaced",
        "",
        *scenario_intro(res, "sweep"),
        *table(head, rows),
        *table(lat_head, lat),
    ]


def section_coalesce(res: Results, meta: dict[str, Any]) -> list[str]:
    """Parley coalescing deltas against the floor sending each alone: model deltas and frames, both."""
    levels = res.levels("coalesce")
    if not levels:
        return []
    n = levels[0]
    floor, parley = res.pair("coalesce", n)
    window = parley.coalesce_ms if parley else math.nan
    runs = [("floor", floor), (f"Parley, coalescing {num(window, 0)} ms", parley)]
    unmerged = res.find("sweep", "parley", n)
    if unmerged is not None and unmerged.coalesce_ms == 0:
        runs.append(("Parley, coalescing off (from the sweep)", unmerged))
    rows = [[name, *coalesce_cells(rec)] for name, rec in runs]
    f_ttft = [value(floor, "ttft_ms", q) for q in ("p50", "p99")]
    p_ttft = [value(parley, "ttft_ms", q) for q in ("p50", "p99")]
    rows.append(
        [
            "Parley coalescing ÷ floor",
            times(ratio(value(parley, "deltas_per_s"), value(floor, "deltas_per_s"))),
            times(ratio(value(parley, "frames_per_s"), value(floor, "frames_per_s"))),
            "",
            f"{added_ms(p_ttft[0] - f_ttft[0])} / {added_ms(p_ttft[1] - f_ttft[1])}",
            "",
            times(ratio(value(parley, "server_cpu_per_delta_us"), value(floor, "server_cpu_per_delta_us"))),
            "",
            "",
            "",
            "",
        ]
    )
    head = [
        "",
        "deltas/s (model's)",
        "`text` frames/s",
        "deltas per frame",
        "first `text` p50 / p99",
        "gap p99 (between frames)",
        "server CPU / delta",
        "server CPU",
        "generator CPU",
        "limited by",
        "errors",
    ]
    rest = run_coalesce(meta)
    chars = value(parley or floor, "spec", "delta_chars")
    notes = [
        f"Parley ran with `PARLEY_COALESCE_MS={num(window, 0)}` in this scenario only (the run's other "
        f"scenarios: `{rest}`). Deltas are the model's deltas: text characters received ÷ the delta size "
        f"({num(chars, 0)} characters, the same at the floor), so a `text` event that carries k merged "
        "deltas counts k; frames are the `text` events themselves. Server CPU per delta is per model delta. "
        "The gap is between consecutive `text` events of a turn.",
        "",
    ]
    title = f"## Unpaced, {n:,} streams, Parley coalescing deltas"
    return [title, "", *scenario_intro(res, "coalesce"), *table(head, rows), *notes]


def added_ms(x: float) -> str:
    """A difference in ms with its sign: +1.20 ms, −3.4 ms."""
    return ms(x) if math.isnan(x) else ("+" if x >= 0 else "−") + ms(abs(x))


def coalesce_cells(rec: RunRecord | None) -> list[str]:
    return [
        rate(value(rec, "deltas_per_s")),
        rate(value(rec, "frames_per_s")),
        num(value(rec, "deltas_per_frame"), 2),
        f"{ms(value(rec, 'ttft_ms', 'p50'))} / {ms(value(rec, 'ttft_ms', 'p99'))}",
        ms(value(rec, "gap_ms", "p99")),
        us(value(rec, "server_cpu_per_delta_us")),
        pct(value(rec, "server_cpu_pct")),
        pct(value(rec, "gen_cpu_pct")),
        limit_of(rec),
        errors_of(rec),
    ]


def section_sweep_postgres(res: Results) -> list[str]:
    title = "## Unpaced streams, Parley on PostgreSQL"
    if not res.has("sweep-postgres"):
        return []
    skipped = next((r.skipped for r in res.records if r.scenario == "sweep-postgres" and r.skipped), None)
    if skipped:
        return [title, "", f"Skipped: {skipped}", ""]
    n = res.levels("sweep-postgres")[0]
    sqlite = res.find("sweep-postgres", "sqlite", n)
    runs = (
        ("floor (from the sweep)", res.find("sweep", "floor", n)),
        (
            "Parley, SQLite" + (" (from the sweep)" if sqlite is None else ""),
            sqlite or res.find("sweep", "parley", n),
        ),
        ("Parley, PostgreSQL", res.find("sweep-postgres", "parley", n)),
    )
    rows = [[name, *latency_cells(rec)] for name, rec in runs if rec is not None or "floor" not in name]
    head = [
        "",
        "`working` p50 / p99",
        "first `text` p50 / p99",
        "gap p99",
        "deltas/s",
        "CPU / delta",
        "errors",
    ]
    intro = [
        f"{n} unpaced streams as in the sweep, with Parley on PostgreSQL and on SQLite, back to back: how "
        "much of the time to first text is SQLite's (one writer at a time) rather than Parley's own.",
        "",
    ]
    return [title, "", *intro, *table(head, rows)]


def latency_cells(rec: RunRecord | None) -> list[str]:
    return [
        f"{ms(value(rec, 'ttw_ms', 'p50'))} / {ms(value(rec, 'ttw_ms', 'p99'))}",
        f"{ms(value(rec, 'ttft_ms', 'p50'))} / {ms(value(rec, 'ttft_ms', 'p99'))}",
        ms(value(rec, "gap_ms", "p99")),
        rate(value(rec, "deltas_per_s")),
        us(value(rec, "server_cpu_per_delta_us")),
        errors_of(rec),
    ]


def knee(res: Results, server: str) -> str:
    """The first level where the server no longer keeps the pace: delivers < 95% of the asked rate, or has a
    gap p99 ≥ 100 ms, or errors."""
    previous = None
    for n in res.levels("paced"):
        rec = res.find("paced", server, n)
        if rec is None:
            continue
        delivered = value(rec, "deltas_per_s") / (n * PACED_RATE)
        if (
            delivered < KNEE_DELIVERED
            or value(rec, "gap_ms", "p99") >= KNEE_GAP_MS
            or value(rec, "error_total") > 0
        ):
            return f"between {previous:,} and {n:,} streams" if previous else f"at or below {n:,} streams"
        previous = n
    return f"beyond {previous:,} streams (not reached)" if previous else "not measured"


def section_paced(res: Results) -> list[str]:
    levels = res.levels("paced")
    if not levels:
        return []
    head = [
        "streams",
        "asked deltas/s",
        "delivered floor / Parley",
        "gap p99 floor / Parley",
        "first `text` p50 / p99 Parley",
        "server CPU floor / Parley",
        "CPU/delta floor / Parley",
        "generator CPU floor / Parley",
        "errors floor / Parley",
    ]
    rows = []
    for n in levels:
        f, p = res.pair("paced", n)
        rows.append(
            [
                f"{n:,}",
                rate(n * PACED_RATE),
                f"{rate(value(f, 'deltas_per_s'))} / {rate(value(p, 'deltas_per_s'))}",
                f"{ms(value(f, 'gap_ms', 'p99'))} / {ms(value(p, 'gap_ms', 'p99'))}",
                f"{ms(value(p, 'ttft_ms', 'p50'))} / {ms(value(p, 'ttft_ms', 'p99'))}",
                f"{pct(value(f, 'server_cpu_pct'))} / {pct(value(p, 'server_cpu_pct'))}",
                f"{us(value(f, 'server_cpu_per_delta_us'))} / {us(value(p, 'server_cpu_per_delta_us'))}",
                f"{pct(value(f, 'gen_cpu_pct'))} / {pct(value(p, 'gen_cpu_pct'))}",
                f"{errors_of(f)} / {errors_of(p)}",
            ]
        )
    knees = [
        f"Knee (first level delivering < {KNEE_DELIVERED:.0%} of the asked rate, or gap p99 ≥ "
        f"{KNEE_GAP_MS:.0f} ms, or errors): floor {knee(res, 'floor')}; Parley {knee(res, 'parley')}.",
        "",
    ]
    return [
        "## Concurrency sweep, paced at 30 deltas/s",
        "",
        *scenario_intro(res, "paced"),
        *table(head, rows),
        *knees,
    ]


def section_cancel(res: Results) -> list[str]:
    floor, parley = res.pair("cancel")
    if floor is None and parley is None:
        return []
    head = [
        "server",
        "cancels measured",
        "cancel → `cancelled` p50 / p99 / max",
        "deltas in flight p50 / max",
        "deltas after `cancelled`",
        "cancel raced completion",
        "partial answers stored",
        "errors",
    ]
    rows = []
    for name, rec in (("floor", floor), ("Parley", parley)):
        check = ((rec.stored or {}).get("cancel") if rec else None) or {}
        stored = f"{check['matched']}/{check['checked']}" if check else "n/a (no database)"
        rows.append(
            [
                name,
                num(value(rec, "cancel", "measured"), 0),
                " / ".join(ms(value(rec, "cancel", "latency_ms", q)) for q in ("p50", "p99", "max")),
                " / ".join(num(value(rec, "cancel", "in_flight", q), 0) for q in ("p50", "max")),
                num(value(rec, "cancel", "after_cancelled"), 0),
                num(value(rec, "cancel", "raced_completion"), 0),
                stored,
                errors_of(rec),
            ]
        )
    notes = [
        '"In flight": deltas that reached the client after it sent `cancel` and before `cancelled` '
        "(sent by the server before it read the cancel). They are part of the stored answer.",
        "",
    ]
    return ["## Cancel under load", "", *scenario_intro(res, "cancel"), *table(head, rows), *notes]


def section_idle(res: Results) -> list[str]:
    floor, parley = res.pair("idle")
    if floor is None and parley is None:
        return []
    head = [
        "server",
        "connections open (at the end)",
        "RSS before",
        "RSS with all open",
        "per connection",
        "per connection (slope over the steps)",
        "server CPU while holding",
    ]
    rows = []
    for name, rec in (("floor", floor), ("Parley", parley)):
        series = rec.load.get("series", []) if rec else []
        rows.append(
            [
                name,
                f"{num(value(rec, 'open'), 0)} ({num(value(rec, 'open_at_end'), 0)})",
                size(value(rec, "baseline_rss")),
                size(value(rec, "final_rss")),
                size(value(rec, "per_connection_bytes")),
                size(series_slope(series)),
                pct(value(rec, "server_cpu_pct")),
            ]
        )
    return ["## Idle connections", "", *scenario_intro(res, "idle"), *table(head, rows)]


def series_slope(series: list[list[float]]) -> float:
    from bench.metrics import slope

    if len(series) < 2:
        return math.nan
    return slope([float(x) for x, _ in series], [float(y) for _, y in series])


def section_persist(res: Results) -> list[str]:
    names = [n for n in ("persist-sqlite", "persist-postgres") if res.has(n)]
    if not names:
        return []
    head = [
        "database",
        "turns/s floor",
        "turns/s Parley",
        "ratio",
        "turn p50 / p99 Parley",
        "server CPU / turn Parley",
        "PostgreSQL CPU / turn",
        "answers stored (completed) / turns completed",
        "errors floor / Parley",
    ]
    rows = []
    for name in names:
        f, p = res.pair(name)
        skipped = next((r.skipped for r in res.records if r.scenario == name and r.skipped), None)
        if skipped:
            rows.append([name.split("-")[1], f"skipped: {skipped}", *[""] * (len(head) - 2)])
            continue
        stored = (p.stored or {}) if p else {}
        statuses = stored.get("statuses", {})
        rows.append(
            [
                name.split("-")[1],
                rate(value(f, "turns_per_s")),
                rate(value(p, "turns_per_s")),
                times(ratio(value(p, "turns_per_s"), value(f, "turns_per_s"))),
                f"{ms(value(p, 'turn_ms', 'p50'))} / {ms(value(p, 'turn_ms', 'p99'))}",
                us(value(p, "server_cpu_per_turn_us")),
                us(value(p, "db_cpu_per_turn_us")) if name.endswith("postgres") else "n/a (in-process)",
                f"{statuses.get('completed', '–')} / {stored.get('client_completed', '–')}",
                f"{errors_of(f)} / {errors_of(p)}",
            ]
        )
    notes = [
        "PostgreSQL runs unpinned (its backends are not ours to pin); its CPU is that of every `postgres` "
        "process on the machine during the window, so other users of that server count too.",
        "",
    ]
    return [
        "## Persisted turns per second",
        "",
        *scenario_intro(res, "persist-sqlite"),
        *table(head, rows),
        *notes,
    ]


def section_slow(res: Results) -> list[str]:
    floor, parley = res.pair("slow")
    if floor is None and parley is None:
        return []
    head = [
        "server",
        "slow clients",
        "stall cycles",
        "RSS start / peak / end",
        "peak: middle third → last third",
        "bounded",
        "bystanders: gap p99",
        "bystanders: delivered / asked",
        "errors",
    ]
    rows = []
    for name, rec in (("floor", floor), ("Parley", parley)):
        series = [float(r) for _, r in rec.load.get("rss", [])] if rec else []
        growth = rss_growth(rec) if rec else {"middle": math.nan, "late": math.nan, "bounded": 0.0}
        asked = value(rec, "open") * PACED_RATE
        rows.append(
            [
                name,
                num(value(rec, "slow_clients"), 0),
                num(value(rec, "slow_cycles"), 0),
                " / ".join(
                    size(x) for x in ((series[0], max(series), series[-1]) if series else (math.nan,) * 3)
                ),
                f"{size(growth['middle'])} → {size(growth['late'])}",
                "yes" if growth["bounded"] else "**no**",
                ms(value(rec, "gap_ms", "p99")),
                f"{rate(value(rec, 'deltas_per_s'))} / {rate(asked)}",
                errors_of(rec),
            ]
        )
    stall = PARLEY_BENCH_SETTINGS["PARLEY_SEND_STALL_TIMEOUT_S"]
    notes = [
        f"Parley runs with `PARLEY_SEND_STALL_TIMEOUT_S={stall}` here (default 10). Each slow answer is "
        f"{size(value(parley or floor, 'slow_answer_bytes'))}; Parley keeps a streaming answer in memory "
        "until it is stored, so the plateau includes the answers in flight.",
        "",
    ]
    return ["## Slow readers", "", *scenario_intro(res, "slow"), *table(head, rows), *notes]


def section_resume(res: Results) -> list[str]:
    """The turn logs: CPU per delta beside the baseline and the floor, resume latency and replay rate, and
    memory per retained ended turn."""
    if not res.has("resume"):
        return []
    return [
        "## Resume: turn event logs",
        "",
        *scenario_intro(res, "resume"),
        *resume_cpu(res),
        *resume_replay(res),
        *resume_memory(res),
    ]


def resume_cpu(res: Results) -> list[str]:
    levels = res.mode_levels("resume", "stream")
    if not levels:
        return []
    rows, revisions = cpu_runs(res, "resume", levels, ("floor", "baseline", "parley"), "baseline")
    which = "; ".join(f"{NAMES[k]}: {v}" for k, v in revisions.items())
    return [
        "CPU per delta, the same unpaced case on the floor, on Parley without the turn logs (`baseline`) and "
        f"with them (Parley), back to back ({which}). Target: Parley ÷ baseline ≤ "
        f"{LOG_CPU_LIMIT:.2f}, judged on each server's lowest CPU per delta over the runs: on a shared "
        "machine one server's CPU per delta moves by ±20% from run to run, and that noise only ever adds "
        "CPU, so the best of several runs is the steadiest reading of the code's own cost (the median of "
        "the pairs' ratios is shown too). Other processes: the CPU the rest of the machine used during the "
        "run (noise).",
        "",
        *table([h.format(versus="baseline") for h in CPU_HEAD], rows),
    ]


CPU_HEAD = [
    "case",
    "server",
    "deltas/s",
    "server CPU / delta",
    "÷ floor",
    "÷ {versus}",
    "first `text` p50 / p99",
    "server CPU",
    "generator CPU",
    "limited by",
    "other processes",
    "errors",
]


def cpu_runs(
    res: Results,
    scenario: str,
    levels: list[int],
    kinds: tuple[str, ...],
    versus: str,
    names: dict[str, str] | None = None,
) -> tuple[list[list[str]], dict[str, str]]:
    """One row per run of each CPU case (repeat by repeat, ``kinds`` in turn), with the last kind ÷ the
    floor and ÷ ``versus``; then, with repeats, the median of the pairs' ratios and the ratio of the
    best of each. Also the revision each kind ran. ``names``: the servers' labels, over ``NAMES``."""
    names = {**NAMES, **(names or {})}
    rows, revisions = [], {}
    top = kinds[-1]
    for level in levels:
        runs = {kind: {r.repeat: r for r in res.runs(scenario, kind, level)} for kind in kinds}
        repeats = sorted({n for by_repeat in runs.values() for n in by_repeat})
        for repeat in repeats:
            floor, other = runs.get("floor", {}).get(repeat), runs[versus].get(repeat)
            for kind in kinds:
                rec = runs[kind].get(repeat)
                if rec is None:
                    continue
                if rec.revision:
                    revisions[kind] = rec.revision
                cpu = value(rec, "server_cpu_per_delta_us")
                rows.append(
                    [
                        rec.label + (f", run {repeat + 1}" if len(repeats) > 1 else ""),
                        names[kind],
                        rate(value(rec, "deltas_per_s")),
                        us(cpu),
                        times(ratio(cpu, value(floor, "server_cpu_per_delta_us"))),
                        times(ratio(cpu, value(other, "server_cpu_per_delta_us"))) if kind == top else "",
                        f"{ms(value(rec, 'ttft_ms', 'p50'))} / {ms(value(rec, 'ttft_ms', 'p99'))}",
                        pct(value(rec, "server_cpu_pct")),
                        pct(value(rec, "gen_cpu_pct")),
                        limit_of(rec),
                        pct(rec.other_cpu_pct if rec.other_cpu_pct is not None else math.nan),
                        errors_of(rec),
                    ]
                )
        pairs = paired(res, scenario, level, top, versus)
        if len(pairs) > 1:
            label = next(iter(runs[top].values())).label if runs[top] else str(level)
            versus_name = f"{names[top]} ÷ {names[versus]}"
            rows.append(
                [f"{label}: median", versus_name, *[""] * 3, fine_times(median([r for *_, r in pairs]))]
            )
            rows[-1] += [""] * 6
            rows.append(
                [f"{label}: best of each", versus_name, *[""] * 3, fine_times(ratio(*best_of_each(pairs)))]
            )
            rows[-1] += [""] * 6
    return rows, revisions


def resume_replay(res: Results) -> list[str]:
    rec = res.of_mode("resume", "parley", "resume")
    if rec is None:
        return []
    live = value(rec, "live", "deltas_per_s", "p50")
    head = [
        "resume (`after_seq: -1`)",
        "resumes",
        "first replayed event p50 / p99 / max",
        "`ping` → `pong` p50 / p99",
        "events replayed (p50)",
        "replay p50 / p99",
        "replay rate p50",
        "÷ live rate",
        "identical to live",
        "caught up → turn's end, lag p50 / max",
    ]
    rows = []
    delay = num(value(rec, "midturn", "delay_ms"), 1)
    for key, name in (("ended", "ended turn"), ("midturn", f"while it streams (`delay_ms` {delay})")):
        replay = value(rec, key, "events_per_s", "p50")
        lag = (
            f"{ms(value(rec, key, 'lag_ms', 'p50'))} / {ms(value(rec, key, 'lag_ms', 'max'))}"
            if key == "midturn"
            else ""
        )
        rows.append(
            [
                name,
                num(value(rec, key, "resumes"), 0),
                " / ".join(ms(value(rec, key, "first_ms", q)) for q in ("p50", "p99", "max")),
                f"{ms(value(rec, key, 'ping_ms', 'p50'))} / {ms(value(rec, key, 'ping_ms', 'p99'))}"
                if key == "ended"
                else "",
                num(value(rec, key, "events", "p50"), 0),
                f"{ms(value(rec, key, 'replay_ms', 'p50'))} / {ms(value(rec, key, 'replay_ms', 'p99'))}",
                rate(replay),
                times(ratio(replay, live)),
                f"{num(value(rec, key, 'identical'), 0)}/{num(value(rec, key, 'resumes'), 0)}",
                lag,
            ]
        )
    cpu = value(rec, "ended", "server_cpu_per_event_us")
    turns, chunks = num(value(rec, "live", "turns"), 0), num(value(rec, "spec", "chunks"), 0)
    whole, turn_ms = rate(value(rec, "live", "events_per_s", "p50")), ms(value(rec, "live", "turn_ms", "p50"))
    notes = [
        f"Live: {turns} unpaced turns of {chunks} deltas ({num(value(rec, 'live', 'events', 'p50'), 0)} "
        f"events) on one connection: {rate(live)} deltas p50 between the first and the last `text` (the "
        f"live rate; whole turn: {whole} events, {turn_ms} p50). Then other connections of the same customer "
        f"({num(value(rec, 'spec', 'connections'), 0)}, round robin, over those turns) send `resume`, one at "
        "a time.",
        "",
        "- *First replayed event*: `resume` sent → its first frame read. Beside it, `ping` → `pong` on the "
        "same connection just before each resume: the round trip of any answer there.",
        "- *Replay rate*: the events up to the last one the turn's own connection had read when `resume` was "
        "sent ÷ the time from sending `resume` to reading that event (the first event's wait included).",
        "- *While it streams*: fresh connections resume paced turns between 10% and 80% of their length, "
        "then follow them live to the end; lag = their last event read after the turn's own connection "
        "read it.",
        "- *Identical*: the frames read equal, byte for byte and in order, those the turn's own connection "
        "read.",
        f"- Server CPU per replayed event (ended turns): {us(cpu)}; server "
        f"{pct(value(rec, 'ended', 'server_cpu_pct'))}, generator {pct(value(rec, 'ended', 'gen_cpu_pct'))} "
        "of a core while replaying.",
        "",
    ]
    return [*table(head, rows), *notes]


def resume_memory(res: Results) -> list[str]:
    runs = [(kind, res.of_mode("resume", kind, "retain")) for kind in ("baseline", "parley")]
    if all(rec is None for _, rec in runs):
        return []
    head = [
        "server",
        "turns kept",
        "events / turn",
        "RSS before → after",
        "RSS / turn (settled)",
        "RSS / turn (slope)",
        "log accounts / turn",
        "RSS ÷ accounted",
        "Parley − baseline / turn",
    ]
    baseline = dict(runs).get("baseline")
    before = {p["deltas"]: p for p in (baseline.load.get("phases", []) if baseline else [])}
    rows = []
    for kind, rec in runs:
        for phase in rec.load.get("phases", []) if rec is not None else []:
            growth, accounted = float(phase["per_turn_bytes"]), float(phase["accounted_per_turn"])
            other = before.get(phase["deltas"]) if kind == "parley" else None
            rows.append(
                [
                    NAMES[kind],
                    f"{phase['turns']:,} × {phase['deltas']:,} deltas",
                    num(float(phase["events_per_turn"]), 0),
                    f"{size(float(phase['rss_before']))} → {size(float(phase['rss_after']))}",
                    size(growth),
                    size(float(phase["slope_bytes"])),
                    size(accounted) if kind == "parley" else "(no log)",
                    times(ratio(growth, accounted)) if kind == "parley" else "",
                    size(growth - float(other["per_turn_bytes"])) if other else "",
                ]
            )
    notes = [
        "Ended turns run back to back over a few connections and are kept (`PARLEY_RESUME_TTL_S` is 600 s, "
        "far beyond the run; their bytes stay below the caps). RSS / turn (settled) = (RSS after the turns "
        "and a pause − RSS before) ÷ turns; (slope) = least squares over RSS read as they ran. What the log "
        "accounts (`TurnStreams.total`: len(body) + 64 per event) is computed from the frames the generator "
        'read: a logged body is exactly the frame\'s tail after `"seq":N,` (parley/protocol.py), so this is '
        "the log's own count, not an estimate, for these frames (ASCII: characters = bytes). The baseline "
        "keeps no log: its growth per turn is what the same turns cost elsewhere (database, caches, the "
        "allocator), so Parley − baseline is the log's real cost per turn.",
        "",
    ]
    return ["Memory per retained ended turn:", "", *table(head, rows), *notes]


def section_scaleout(res: Results) -> list[str]:
    """Redis scale-out: CPU per delta with Redis beside without it, 2 processes beside 1, and cancels and
    resumes sent on the process that does not run the turn."""
    if not res.has("scaleout"):
        return []
    return [
        "## Scale-out: Redis and several processes",
        "",
        *scenario_intro(res, "scaleout"),
        *scaleout_cpu(res),
        *scaleout_wide(res),
        *scaleout_remote(res),
    ]


def scaleout_cpu(res: Results) -> list[str]:
    levels = scaleout_cpu_levels(res)
    if not levels:
        return []
    rows, _ = cpu_runs(res, "scaleout", levels, ("parley", "redis"), "parley")
    redis = []
    for level in levels:
        runs = [value(r, "redis_cpu_per_delta_us") for r in res.runs("scaleout", "redis", level)]
        runs = [x for x in runs if not math.isnan(x)]
        if runs:
            spread = us(runs[0]) if len(runs) == 1 else f"{us(min(runs))}–{us(max(runs))}"
            redis.append(f"{spread} ({res.runs('scaleout', 'redis', level)[0].label})")
    return [
        "CPU per delta of the one Parley process, without Redis (Parley) and with `PARLEY_REDIS_URL` "
        "(Parley + Redis), both on PostgreSQL, back to back. Target: with ÷ without ≤ "
        f"{REDIS_CPU_LIMIT:.2f}, judged on each server's lowest CPU per delta over the runs (as in "
        f"`resume`). Redis's own CPU is not in it; per delta it was {'; '.join(redis) or '–'}.",
        "",
        *table(
            [h.format(versus="Parley") for h in CPU_HEAD if h != "÷ floor"], [r[:4] + r[5:] for r in rows]
        ),
    ]


METRICS_NAMES = {"parley": "metrics on", "nometrics": "metrics off"}


def section_metrics(res: Results) -> list[str]:
    """Prometheus metrics on beside ``PARLEY_METRICS=false``: CPU per delta, run by run."""
    if not res.has("metrics"):
        return []
    levels = metrics_cpu_levels(res)
    rows, _ = cpu_runs(res, "metrics", levels, ("nometrics", "parley"), "nometrics", METRICS_NAMES)
    head = [h for h in CPU_HEAD if h != "÷ floor"]  # no floor in this scenario
    probes = []
    for kind in ("parley", "nometrics"):
        seen = [p.get("status") for p in metrics_probes(res, kind)]
        statuses = ", ".join(f"{s}" for s in sorted({str(s) for s in seen})) or "–"
        probes.append(f"{METRICS_NAMES[kind]}: {statuses} ({len(seen)} runs)")
    return [
        "## Metrics: Prometheus on and off",
        "",
        *scenario_intro(res, "metrics"),
        "CPU per delta of Parley on SQLite with its metrics off (`PARLEY_METRICS=false`, `nometrics`) and on "
        "(the default, `parley`), back to back, fresh servers each run, the order reversed every other "
        f"repeat. Target (issue #15): on ÷ off ≤ {METRICS_CPU_LIMIT:.2f}, judged on each server's lowest CPU "
        "per delta over the runs (as in `resume` and `scaleout`: the machine's noise only ever adds CPU); "
        "the median of the pairs' ratios is shown too. A 3% limit is below one run's noise on a shared "
        "machine: judge it on a quiet one. `GET /metrics` after each run answered: "
        + "; ".join(probes)
        + ".",
        "",
        *table([h.format(versus="metrics off") for h in head], [r[:4] + r[5:] for r in rows]),
    ]


def scaleout_wide(res: Results) -> list[str]:
    wide = scaleout_wide_level(res)
    if wide is None:
        return []
    head = [
        "run",
        "processes",
        "deltas/s",
        "server CPU (each process)",
        "server CPU / delta",
        "generator CPU (/ delta)",
        "PostgreSQL CPU",
        "Redis CPU",
        "all of these",
        "+ other processes, interrupts",
        "first `text` p50 / p99",
        "errors",
    ]
    rows = []
    for kind in ("redis", "cluster"):
        for rec in res.runs("scaleout", kind, wide):
            each = rec.load.get("server_cpu_each_pct")
            rows.append(
                [
                    str(rec.repeat + 1),
                    "2" if kind == "cluster" else "1",
                    rate(value(rec, "deltas_per_s")),
                    pct(value(rec, "server_cpu_pct"))
                    + (f" ({' + '.join(pct(x) for x in each)})" if each else ""),
                    us(value(rec, "server_cpu_per_delta_us")),
                    f"{pct(value(rec, 'gen_cpu_pct'))} ({us(value(rec, 'gen_cpu_per_delta_us'))})",
                    pct(value(rec, "db_cpu_pct")),
                    pct(value(rec, "redis_cpu_pct")),
                    pct(machine_cpu_pct(rec)),
                    pct(machine_cpu_pct(rec, everything=True)),
                    f"{ms(value(rec, 'ttft_ms', 'p50'))} / {ms(value(rec, 'ttft_ms', 'p99'))}",
                    errors_of(rec),
                ]
            )
    pairs = paired(res, "scaleout", wide, "cluster", "redis", "deltas_per_s")
    best = best_of_each(pairs, most=True)
    cpu = paired(res, "scaleout", wide, "cluster", "redis")
    lows = best_of_each(cpu)
    notes = [
        f"{wide} unpaced streams on one Parley process with Redis, then on two processes sharing PostgreSQL "
        f"and Redis (connections alternate between the two ports). Target: 2 processes ≥ {SCALE_LIMIT:g} × "
        f"the deltas/s of 1 (best of each over the runs: {fine_times(ratio(*best))}). **The load generator "
        "shares this machine's two cores**: with one process it has a core to itself beside the server; with "
        "two, the second process runs on the generator's core, and PostgreSQL and Redis run wherever there "
        "is room. *All of these* adds up the servers, the generator, PostgreSQL and Redis, of the 200% the "
        "two cores have; then what the rest of the machine used (other processes, over the whole run, and "
        "interrupts): near 200% the figure is the machine's limit, not Parley's. Server CPU per delta "
        f"(lowest of each) 2 processes ÷ 1: {fine_times(ratio(*lows))}: near 1.00× a process costs what it "
        "did alone, and deltas/s grow with the cores given to the servers.",
        "",
    ]
    return [f"{wide} unpaced streams, 1 process and 2:", "", *table(head, rows), *notes]


def scaleout_remote(res: Results) -> list[str]:
    cancel = next(iter(res.with_spec("scaleout", "cluster", remote_action="cancel")), None)
    resume = next(iter(res.with_spec("scaleout", "cluster", remote_action="resume")), None)
    if cancel is None and resume is None:
        return []
    lines = []
    if cancel is not None:
        check = (cancel.stored or {}).get("cancel") or {}
        head = [
            "cancels measured",
            "cancel (on B) → `cancelled` (on A) p50 / p99 / max",
            "deltas in flight p50 / max",
            "deltas after `cancelled`",
            "raced completion",
            "partial answers stored",
            "deltas/s",
            "server CPU A + B",
            "errors",
        ]
        each = cancel.load.get("server_cpu_each_pct") or []
        row = [
            num(value(cancel, "cancel", "measured"), 0),
            " / ".join(ms(value(cancel, "cancel", "latency_ms", q)) for q in ("p50", "p99", "max")),
            " / ".join(num(value(cancel, "cancel", "in_flight", q), 0) for q in ("p50", "max")),
            num(value(cancel, "cancel", "after_cancelled"), 0),
            num(value(cancel, "cancel", "raced_completion"), 0),
            f"{check['matched']}/{check['checked']}" if check else "–",
            rate(value(cancel, "deltas_per_s")),
            " + ".join(pct(x) for x in each) or "–",
            errors_of(cancel),
        ]
        lines += ["Cancels sent on the other process (B) of turns running on A:", "", *table(head, [row])]
    if resume is not None:
        head = [
            "resumes measured",
            "first replayed event p50 / p99 / max",
            "caught up with A p50 / p99",
            "events replayed p50",
            "read whole",
            "refused",
            "B's last event after A's, p50 / max",
            "deltas/s",
            "server CPU A + B",
            "errors",
        ]
        each = resume.load.get("server_cpu_each_pct") or []
        key = "remote_resume"
        row = [
            num(value(resume, key, "resumes"), 0),
            " / ".join(ms(value(resume, key, "first_ms", q)) for q in ("p50", "p99", "max")),
            f"{ms(value(resume, key, 'replay_ms', 'p50'))} / {ms(value(resume, key, 'replay_ms', 'p99'))}",
            num(value(resume, key, "events", "p50"), 0),
            f"{num(value(resume, key, 'identical'), 0)}/{num(value(resume, key, 'resumes'), 0)}",
            num(value(resume, key, "refused"), 0),
            f"{ms(value(resume, key, 'lag_ms', 'p50'))} / {ms(value(resume, key, 'lag_ms', 'max'))}",
            rate(value(resume, "deltas_per_s")),
            " + ".join(pct(x) for x in each) or "–",
            errors_of(resume),
        ]
        lines += ["Resumes (`after_seq: -1`) sent on B of turns running on A:", "", *table(head, [row])]
    lines += [
        f"Targets: cancel → `cancelled` ≤ {REMOTE_MS:g} ms p99; resume → first replayed event ≤ "
        f"{REMOTE_MS:g} ms p50. The cancel's time runs from sending it on B to reading `cancelled` on A (B "
        "follows nothing and gets nothing). A resume's *caught up*: sent → the event A had last read when it "
        "was sent; *read whole*: B read as many events of the turn as A did, to its last; one resume at a "
        "time per B connection.",
        "",
    ]
    return lines


def observations(res: Results) -> list[str]:
    notes = []
    for r in res.records:
        where = f"{r.scenario} / {r.label} / {r.server}"
        if r.failure:
            lines = r.failure.strip().splitlines() or [""]
            detail = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
            notes.append(f"- **{where}: the run failed**: `{detail[:300]}`")
        if r.ok and value(r, "gen_cpu_pct") >= GENERATOR_BOUND_PCT:
            notes.append(
                f"- {where}: the generator ran at {pct(value(r, 'gen_cpu_pct'))} CPU: this figure is (close "
                "to) the client's limit, not the server's."
            )
        if r.ok and value(r, "error_total") > 0:
            samples = "; ".join(r.load.get("error_samples", [])[:3])
            notes.append(
                f"- {where}: {int(value(r, 'error_total'))} errors {r.load.get('errors')} — e.g. {samples}"
            )
        if r.log.get("warnings") or r.log.get("errors"):
            sample = (r.log.get("samples") or [""])[0]
            notes.append(
                f"- {where}: server log has {r.log['warnings']} warnings, {r.log['errors']} errors, "
                f"{r.log.get('tracebacks', 0)} tracebacks — first: `{sample[:200]}`"
            )
        if r.stored and "error" in r.stored:
            notes.append(f"- {where}: could not read what was stored: {r.stored['error']}")
        stuck = (r.stored or {}).get("statuses", {}).get("streaming", 0)
        if stuck:
            notes.append(
                f"- {where}: {stuck} answers still `streaming` in the database after the server stopped."
            )
    notes += shape_notes(res) + count_notes(res) + noise_notes(res)
    return [
        "## Observations",
        "",
        *(notes or ["- Nothing unusual: no errors, no warnings, generator never saturated."]),
        "",
    ]


def noise_notes(res: Results) -> list[str]:
    """How much else ran: other processes (noise), and interrupt work (our own loopback traffic, mostly)."""
    runs = [r for r in res.records if r.other_cpu_pct is not None]
    noisy = sorted(
        (r for r in runs if (r.other_cpu_pct or 0) >= NOISY_OTHER_PCT), key=lambda r: -(r.other_cpu_pct or 0)
    )
    notes = []
    if noisy:
        worst = ", ".join(
            f"{r.scenario} / {r.label} / {r.server} {pct(r.other_cpu_pct or 0)}" for r in noisy[:4]
        )
        notes.append(
            f"- Other processes used ≥ {NOISY_OTHER_PCT:.0f}% of a core during {len(noisy)} of {len(runs)} "
            f"runs (most: {worst}). Those figures are noisy; the machine was shared."
        )
    irq = [r.interrupt_cpu_pct for r in runs if r.interrupt_cpu_pct is not None]
    if irq:
        notes.append(
            f"- Interrupt work (loopback networking, charged to no process, so in no CPU figure above) "
            f"took {min(irq):.0f}–{max(irq):.0f}% of a core during a run."
        )
    return notes


def shape_notes(res: Results) -> list[str]:
    """Do the floor and Parley send the same events of the same size? One line per scenario/level (not
    where Parley coalesces: there it sends fewer events by design)."""
    notes = []
    for r in res.records:
        if r.server != "parley" or not r.ok or r.coalesce_ms > 0:
            continue
        floor = res.find(r.scenario, "floor", r.level)
        a, b = r.load.get("shape"), floor.load.get("shape") if floor else None
        if a and b and (a["events"] != b["events"] or abs(a["bytes"] - b["bytes"]) > 0.01 * b["bytes"]):
            notes.append(
                f"- {r.scenario} / {r.label}: frames differ: Parley {a['events']} events, {a['bytes']:,} B "
                f"per turn; floor {b['events']} events, {b['bytes']:,} B."
            )
    return notes


def count_notes(res: Results) -> list[str]:
    """Without coalescing every `text` event is one delta: the two counts must agree."""
    notes = []
    for r in res.records:
        if not r.ok or r.coalesce_ms > 0 or "frames_window" not in r.load:
            continue
        deltas, frames = value(r, "deltas_window"), value(r, "frames_window")
        if deltas != frames:
            notes.append(
                f"- {r.scenario} / {r.label} / {r.server}: {num(deltas, 0)} deltas counted (text characters "
                f"÷ delta size) but {num(frames, 0)} `text` events, with coalescing off."
            )
    return notes


def frame_check(res: Results) -> list[str]:
    rows = []
    for name in dict.fromkeys(r.scenario for r in res.records):
        f, p = res.pair(name, res.levels(name)[0] if res.levels(name) else None)
        fs, ps = (f.load.get("shape") if f else None), (p.load.get("shape") if p else None)
        if fs and ps:
            merged = ""
            if p is not None and p.coalesce_ms > 0:
                shapes = num(value(p, "distinct_shapes"), 0)
                merged = f" (coalescing {num(p.coalesce_ms, 0)} ms: the most common of {shapes} shapes)"
            rows.append(
                [name, f"{fs['events']} / {fs['bytes']:,} B", f"{ps['events']} / {ps['bytes']:,} B{merged}"]
            )
    if not rows:
        return []
    return [
        "Same frames? Events and bytes of one completed turn, as the generator received them:",
        "",
        *table(["scenario", "floor: events / bytes", "Parley: events / bytes"], rows),
    ]


def section_machine(machine: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    libs = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    rows = [
        [
            "CPU",
            f"{machine.get('cpu')} — {machine.get('cores')} cores (usable: {machine.get('usable_cores')})",
        ],
        ["memory", size(float(machine.get("memory_bytes", 0)))],
        ["OS / kernel", f"{machine.get('os')} / {machine.get('kernel')}"],
        ["Python", str(machine.get("python"))],
        ["libraries", libs],
        ["SQLite / PostgreSQL", f"{machine.get('sqlite')} / {machine.get('postgres')}"],
        ["Parley revision", str(machine.get("revision"))],
        *(
            [["baseline revision", str(machine["baseline_revision"])]]
            if "baseline_revision" in machine
            else []
        ),
        [
            "pinning",
            f"servers on core {meta.get('server_cores')}, generator on core {meta.get('generator_cores')}",
        ],
    ]
    return ["## Machine", "", *table(["", ""], rows)]


def section_method(res: Results) -> list[str]:
    others = [r.other_cpu_pct for r in res.records if r.other_cpu_pct is not None]
    noise = f"{min(others):.0f}–{max(others):.0f}%" if others else "–"
    return [
        *METHOD.read_text().rstrip().splitlines(),
        f"- **Noise**: other processes used {noise} of one core during a run (the machine's busy time in",
        "  /proc/stat, less our processes' and less interrupt time). Other people's tests show up there.",
        "",
        *frame_check(res),
    ]


def section_settings(meta: dict[str, Any]) -> list[str]:
    env = {
        **PARLEY_BENCH_SETTINGS,
        "PARLEY_JWT_SECRET": "(random per run)",
        "PARLEY_DATA_DIR": "(fresh per run)",
        "PARLEY_DATABASE_URL": "unset (SQLite in the data dir) / postgresql://…/parley_bench_<random>",
        **(
            {"PARLEY_REDIS_URL": "unset / redis://127.0.0.1:<free port>/0 (scaleout: redis, cluster)"}
            if "scaleout" in (meta.get("scenarios") or {})
            else {}
        ),
        **(
            {"PARLEY_METRICS": "unset (on, Parley's default) / false (metrics: nometrics)"}
            if "metrics" in (meta.get("scenarios") or {})
            else {}
        ),
        **(meta.get("parley_env") or {}),
    }
    lines = ["## Settings", "", "Parley's environment (anything else is Parley's default):", ""]
    lines += table(["variable", "value"], ([f"`{k}`", f"`{v}`"] for k, v in env.items()))
    own = scenario_env(meta)
    if own:
        lines += ["Scenarios with Parley settings of their own, over these (for their Parley runs only):", ""]
        lines += table(
            ["scenario", "settings"],
            ([name, ", ".join(f"`{k}={v}`" for k, v in e.items())] for name, e in own.items()),
        )
    rows = []
    for name, scenario in meta.get("scenarios", {}).items():
        for case in scenario.get("cases", []):
            load = {k: v for k, v in case["load"].items() if k != "mode"}
            params = ", ".join(f"{k}={round(v, 2) if isinstance(v, float) else v}" for k, v in load.items())
            rows.append([name, case["label"], f"`{params}`"])
    lines += ["Generator settings per case (`bench/scenarios.py`; times in seconds):", ""]
    lines += table(["scenario", "case", "settings"], rows)
    return lines


def section_charts(charts: list[tuple[str, str]]) -> list[str]:
    if not charts:
        return []
    lines = ["## Charts", ""]
    for path, caption in charts:
        lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    return lines


def section_findings(path: Path = FINDINGS) -> list[str]:
    """The engineers' reading of the last full run (``bench/findings.md``): what the profile says stands
    in the way of each missed target. Written by hand, so it names the run it was written for."""
    if not path.exists():
        return []
    return [path.read_text().strip(), ""]


def section_profile(res: Results, meta: dict[str, Any]) -> list[str]:
    """py-spy's samples of Parley per profiled case, or the placeholder saying how to get them."""
    setup = meta.get("profile")
    if setup is None:
        return [
            "## Profile",
            "",
            PROFILE_MARK,
            "",
            "> Not profiled in this run. Run with `--profile` (needs py-spy, from the `bench` extra) to "
            "sample the Parley server with py-spy during each case's measuring window and see here where "
            "its time goes.",
            "",
        ]
    if not setup.get("py_spy"):
        return [
            "## Profile",
            "",
            f"`--profile` was given, but nothing was sampled: {setup.get('problem')}.",
            "",
        ]
    profiled = [r for r in res.records if r.profile is not None]
    lines = ["## Profile", "", *profile_intro(res, setup, meta), *profile_overview(profiled)]
    for record in profiled:
        lines += profile_case(record)
    return lines


def profile_intro(res: Results, setup: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    missed = [v.target for v in verdicts(res) if v.met is False]
    cores = ", ".join(str(c) for c in setup.get("cores", []))
    shared = (
        " (the generator's: no core was spare, so Parley's figures in this run had a generator with less "
        "CPU than an unprofiled run's)"
        if setup.get("cores") == meta.get("generator_cores")
        else ""
    )
    lines = [
        f"{setup.get('py_spy')} sampled the Parley server {setup.get('rate_hz')} times a second during "
        "each case's measuring window (`--nonblocking`: the server is never paused; py-spy ran on core "
        f"{cores}{shared}). A sample is one thread's stack at a tick when it was running or ready to "
        "run: sleeping threads (waiting on a socket, a lock, a queue) are left out, so the shares are of "
        "the server's busy time. A thread ready to run may be waiting for the server's one core while "
        "another thread has it.",
        "",
        "Time in C code (uvloop's I/O, sqlite3, orjson, pydantic-core) counts for the Python function that "
        "called it; *event loop (native I/O, callbacks)* is uvloop at work with no Python frame above it "
        "(socket reads and writes, timers, scheduling: `Runner.run` as the leaf). *On the stack* leaves "
        "out each thread's entry frames (runpy, uvicorn, `Runner.run`, threading's bootstrap), which are "
        "on every one of its stacks. The raw stacks are in the files named below (collapsed stacks: "
        "`flamegraph.pl` or speedscope draw them).",
        "",
    ]
    if missed:
        lines += [f"Targets missed in this run: {'; '.join(missed)}. The cases behind them are below.", ""]
    return lines


def profile_overview(records: list[RunRecord]) -> list[str]:
    """One row per profiled case: the share of samples per bucket, Parley's modules folded into one."""
    summed = [
        (f"{r.scenario} · {r.label}", r.profile["samples"], profile_groups(r.profile))
        for r in records
        if r.profile and r.profile.get("samples")
    ]
    if not summed:
        return []
    groups = [b for b in BUCKETS if any(counts.get(b) for _, _, counts in summed)]
    rows = [
        [case, f"{n:,}", *(share(counts[b], n) if b in counts else "–" for b in groups)]
        for case, n, counts in summed
    ]
    return [
        "Where the server's time went (share of samples by the leaf frame's library; Parley's own modules "
        "together):",
        "",
        *table(["case", "samples", *groups], rows),
    ]


def profile_groups(profile: dict[str, Any]) -> dict[str, int]:
    """Samples per bucket, Parley's modules together."""
    counts: dict[str, int] = {}
    for name, samples in profile["buckets"]:
        counts[bucket_group(name)] = counts.get(bucket_group(name), 0) + samples
    return counts


def profile_case(record: RunRecord) -> list[str]:
    profile = record.profile or {}
    title = f"### {record.scenario} · {record.label}"
    if profile.get("error"):
        return [title, "", f"No profile: {profile['error']}", ""]
    total = profile["samples"]
    head = [
        f"{total:,} samples in {profile['duration_s']} s (`{profile['file']}`). "
        f"Threads: {thread_shares(profile)}.",
        "",
    ]
    partial = profile.get("partial", 0)
    if partial:
        head += [
            f"{share(partial, total)} of the samples are partial stacks (py-spy read them as they changed): "
            "their leaf counts, their entry frames are missing.",
            "",
        ]
    if profile.get("notes"):
        head += [f"py-spy warned: {'; '.join(profile['notes'])}.", ""]
    buckets = table(["where (leaf frame's file)", "share"], bucket_rows(profile))
    return [title, "", *head, *buckets, *top_functions(profile)]


def thread_shares(profile: dict[str, Any]) -> str:
    """Each thread's share, and its deepest entry frame when its name does not say it."""
    parts = []
    for name, samples in profile["threads"]:
        entered = profile.get("entered", {}).get(name, "")
        under = f" (in `{entered}`)" if entered and not name.endswith(entered) else ""
        parts.append(f"{name} {share(samples, profile['samples'])}{under}")
    return ", ".join(parts)


def bucket_rows(profile: dict[str, Any]) -> list[list[str]]:
    """Buckets of at least 1% one per row; the rest summed up in one, named."""
    total = profile["samples"]
    rows, minor = [], []
    for name, samples in profile["buckets"]:
        if 100 * samples / total >= MINOR_BUCKET_PCT:
            rows.append([name, share(samples, total)])
        else:
            minor.append((name, samples))
    if minor:
        names = ", ".join(name for name, _ in minor)
        rows.append([f"under {MINOR_BUCKET_PCT:.0f}% each: {names}", share(sum(n for _, n in minor), total)])
    return rows


def top_functions(profile: dict[str, Any]) -> list[str]:
    """Top functions side by side: inclusive (on the stack) and own (the leaf), with their files."""
    total = profile["samples"]
    inclusive, own = profile["inclusive"], profile["own"]
    rows = []
    for index in range(max(len(inclusive), len(own))):
        row = [str(index + 1)]
        for ranking in (inclusive, own):
            row += function_cells(ranking[index], total) if index < len(ranking) else ["", ""]
        rows.append(row)
    head = ["#", "on the stack (inclusive)", "share", "running itself (own)", "share"]
    return table(head, rows)


def function_cells(entry: list[Any], total: int) -> list[str]:
    module, func, samples = entry
    return [f"`{func}` {Path(module).name}" if module else f"`{func}`", share(samples, total)]


def share(samples: int, total: int) -> str:
    return f"{100 * samples / total:.1f}%" if total else "–"


def render(
    records: list[RunRecord], machine: dict[str, Any], meta: dict[str, Any], charts: list[tuple[str, str]]
) -> str:
    descriptions = {name: s.get("what", "") for name, s in meta.get("scenarios", {}).items()}
    res = Results(records, descriptions)
    minutes = num(float(meta.get("duration_s", 0)) / 60, 1)
    mode = "quick (harness check; numbers are not comparable to a full run)" if meta.get("quick") else "full"
    head = [
        "# Parley benchmark: Parley against the floor",
        "",
        f"Run {meta.get('started')} → {meta.get('finished')} ({minutes} min), mode: {mode}. "
        f"Command: `{meta.get('command')}`.",
        "",
        "The floor is the same ASGI server sending the same frames with no auth, no database and no "
        "provider; each case runs the floor, then Parley, back to back. Ratios are Parley ÷ floor.",
        "",
    ]
    body = [
        *section_targets(res, meta),
        *section_findings(),
        *section_single(res),
        *section_sweep(res),
        *section_coalesce(res, meta),
        *section_sweep_postgres(res),
        *section_paced(res),
        *section_cancel(res),
        *section_idle(res),
        *section_persist(res),
        *section_slow(res),
        *section_resume(res),
        *section_scaleout(res),
        *section_metrics(res),
        *observations(res),
        *section_charts(charts),
        *section_profile(res, meta),
        *section_method(res),
        *section_settings(meta),
        *section_machine(machine, meta),
    ]
    return "\n".join([*head, *body]).rstrip() + "\n"
