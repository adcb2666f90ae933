"""The issue's targets, judged on a run: met, missed by how much, or not measured in this run."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bench.harness import RunRecord
from bench.metrics import KIB, MIB
from bench.results import PACED_RATE, Results, floors, ms, num, rate, ratio, size, times, us, value


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None
    gap: str = ""

    def row(self) -> list[str]:
        mark = "not measured" if self.met is None else "met" if self.met else "**missed**"
        return [self.target, self.measured, mark, self.gap]


def percent(share: float) -> str:
    """A share as a percentage, with a decimal where whole numbers would hide it (94.8%, not 95%)."""
    return f"{100 * share:.0f}%" if abs(share) >= 0.1 else f"{100 * share:.1f}%"


def judge_at_most(measured: float, limit: float, unit: Callable[[float], str]) -> tuple[bool | None, str]:
    if math.isnan(measured):
        return None, ""
    if measured <= limit:
        return True, ""
    over = measured - limit
    return False, f"by {unit(over)} ({percent(over / limit)} over)" if limit else f"by {unit(over)}"


def judge_at_least(measured: float, limit: float, unit: Callable[[float], str]) -> tuple[bool | None, str]:
    if math.isnan(measured):
        return None, ""
    if measured >= limit:
        return True, ""
    short = limit - measured
    return False, f"by {unit(short)} ({percent(short / limit)} short)"


def at_most(
    target: str, measured: float, limit: float, unit: Callable[[float], str], shown: str = ""
) -> Verdict:
    met, gap = judge_at_most(measured, limit, unit)
    return Verdict(target, "–" if math.isnan(measured) else shown or unit(measured), met, gap)


def at_least(
    target: str, measured: float, limit: float, unit: Callable[[float], str], shown: str = ""
) -> Verdict:
    met, gap = judge_at_least(measured, limit, unit)
    return Verdict(target, "–" if math.isnan(measured) else shown or unit(measured), met, gap)


def cpu_targets(res: Results) -> list[Verdict]:
    out = []
    longest = max(res.levels("single"), default=200)
    cases = (
        ("single", longest, f"single stream, {longest}-delta turns"),
        ("sweep", 100, "100 unpaced streams"),
    )
    for scenario, level, where in cases:
        floor, parley = res.pair(scenario, level)
        a, b = value(parley, "server_cpu_per_delta_us"), value(floor, "server_cpu_per_delta_us")
        shown = f"{times(ratio(a, b))} ({us(a)} vs {us(b)})"
        out.append(at_most(f"server CPU per delta ≤ 2 × floor, {where}", ratio(a, b), 2.0, floors, shown))
    return out


def throughput_targets(res: Results) -> list[Verdict]:
    floor, parley = res.pair("sweep", 100)
    a, b = value(parley, "deltas_per_s"), value(floor, "deltas_per_s")
    shown = f"{times(ratio(a, b))} ({rate(a)} vs {rate(b)})"
    return [
        at_least("delivered deltas/s at 100 unpaced streams ≥ 0.6 × floor", ratio(a, b), 0.6, floors, shown)
    ]


def coalesce_targets(res: Results) -> list[Verdict]:
    """Model deltas delivered (not frames) by Parley coalescing ÷ the floor, which sends each delta alone."""
    target = "delivered deltas/s at 100 unpaced streams, coalescing on ≥ 1.5 × floor"
    floor, parley = res.pair("coalesce", 100)
    if parley is not None and parley.coalesce_ms <= 0:
        return [Verdict(target, "– (Parley ran with coalescing off)", None)]
    a, b = value(parley, "deltas_per_s"), value(floor, "deltas_per_s")
    per_frame = value(parley, "deltas_per_frame")
    shown = (
        f"{times(ratio(a, b))} ({rate(a)} vs {rate(b)}; Parley at `PARLEY_COALESCE_MS="
        f"{num(parley.coalesce_ms if parley else math.nan, 0)}`, {num(per_frame, 1)} deltas per frame)"
    )
    return [at_least(target, ratio(a, b), 1.5, floors, shown)]


def ttft_targets(res: Results) -> list[Verdict]:
    """Judged on unpaced streams (the issue's default); paced streams are shown beside, for reference."""
    out = []
    for scenario, how in (("sweep", "unpaced"), ("paced", "paced 30/s, for reference")):
        floor, parley = res.pair(scenario, 100)
        for q, limit in (("p50", 3.0), ("p99", 15.0)):
            a, b = value(parley, "ttft_ms", q), value(floor, "ttft_ms", q)
            target = f"time to first text added over floor, 100 streams ({how}), {q} ≤ {limit:g} ms"
            out.append(at_most(target, a - b, limit, ms, f"+{ms(a - b)} ({ms(a)} vs {ms(b)})"))
    return out


def cancel_targets(res: Results) -> list[Verdict]:
    parley = res.find("cancel", "parley", 100)
    out = [
        at_most(
            "cancel → cancelled at 100 streams, p50 ≤ 5 ms",
            value(parley, "cancel", "latency_ms", "p50"),
            5.0,
            ms,
        ),
        at_most(
            "cancel → cancelled at 100 streams, p99 ≤ 20 ms",
            value(parley, "cancel", "latency_ms", "p99"),
            20.0,
            ms,
        ),
        at_most(
            "deltas after `cancelled` = 0",
            value(parley, "cancel", "after_cancelled"),
            0.0,
            lambda x: num(x, 0),
        ),
    ]
    check = (parley.stored or {}).get("cancel") if parley else None
    if check:
        met = check["matched"] == check["checked"]
        gap = "" if met else f"{check['checked'] - check['matched']} differ"
        out.append(
            Verdict(
                "partial answers persisted (status cancelled, exact text)",
                f"{check['matched']}/{check['checked']}",
                met,
                gap,
            )
        )
    return out


def memory_targets(res: Results) -> list[Verdict]:
    parley = res.find("idle", "parley", 5000)
    kib = value(parley, "per_connection_bytes") / KIB
    return [at_most("memory per idle connection at 5,000 ≤ 30 KiB", kib, 30.0, lambda x: f"{x:.1f} KiB")]


def persist_targets(res: Results) -> list[Verdict]:
    out = []
    for db, name, limit in (("sqlite", "SQLite", 1000.0), ("postgres", "PostgreSQL", 800.0)):
        parley = res.find(f"persist-{db}", "parley")
        out.append(
            at_least(f"persisted turns/s, {name} ≥ {limit:,.0f}", value(parley, "turns_per_s"), limit, rate)
        )
    return out


def paced_targets(res: Results) -> list[Verdict]:
    parley = res.find("paced", "parley", 1000)
    delivered = value(parley, "deltas_per_s") / (1000 * PACED_RATE)
    shown = f"{100 * delivered:.1f}% ({rate(value(parley, 'deltas_per_s'))} of {rate(1000 * PACED_RATE)})"
    return [
        at_most("1,000 paced streams: gap p99 < 100 ms", value(parley, "gap_ms", "p99"), 100.0, ms),
        at_most("1,000 paced streams: 0 errors", value(parley, "error_total"), 0.0, lambda x: num(x, 0)),
        at_least(
            "1,000 paced streams: delivered ≥ 95% of the asked rate (not an issue target: the knee check)",
            delivered,
            0.95,
            lambda x: f"{100 * x:.1f}%",
            shown,
        ),
    ]


def slow_targets(res: Results) -> list[Verdict]:
    parley = res.find("slow", "parley")
    if parley is None:
        return [Verdict("slow readers: server memory stays bounded", "–", None)]
    growth = rss_growth(parley)
    shown = f"last third peak {size(growth['late'])} vs middle third {size(growth['middle'])}"
    return [Verdict("slow readers: server memory stays bounded", shown, growth["bounded"] > 0)]


LOG_CPU_LIMIT = 1.10  # server CPU per delta with the turn log ÷ without it
FIRST_REPLAYED_MS = 5.0
RESUME_MODES = (("ended", "ended"), ("midturn", "while it streams"))


def resume_where(res: Results, level: int) -> str:
    parley = res.find("resume", "parley", level) or res.find("resume", "baseline", level)
    chunks = int(value(parley, "spec", "chunks")) if parley is not None else 200
    return f"single stream, {chunks}-delta turns" if level == 1 else f"{level} unpaced streams"


def log_cpu_pairs(res: Results, level: int) -> list[tuple[float, float, float]]:
    """Server CPU per delta of Parley and of the baseline, and their ratio, for each repeat of a `resume`
    CPU case in which both ran."""
    baseline = {r.repeat: r for r in res.runs("resume", "baseline", level)}
    pairs = []
    for parley in res.runs("resume", "parley", level):
        if parley.repeat in baseline:
            a = value(parley, "server_cpu_per_delta_us")
            b = value(baseline[parley.repeat], "server_cpu_per_delta_us")
            pairs.append((a, b, ratio(a, b)))
    return pairs


def fine_times(x: float) -> str:
    """A ratio with three decimals: a near miss of the 10% target must not round to the limit."""
    return "–" if math.isnan(x) else f"{x:.3f}×"


def median(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def best_of_each(pairs: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Parley's and the baseline's lowest CPU per delta over the pairs."""
    lows = [min((p[i] for p in pairs if not math.isnan(p[i])), default=math.nan) for i in (0, 1)]
    return lows[0], lows[1]


def log_cpu_targets(res: Results) -> list[Verdict]:
    """Parley ÷ the baseline (the code before the turn logs), side by side in the `resume` scenario: each
    server's lowest CPU per delta over the repeats, divided. On a shared machine the noise only ever adds
    CPU (another tenant on the core, a cold cache): one server's figure moves by ±20% between runs of the
    same code, so the best of several runs is the steadiest reading of what the code costs. The pairs'
    ratios are shown beside it."""
    out = []
    for level in res.mode_levels("resume", "stream") or [1, 100]:
        pairs = log_cpu_pairs(res, level)
        best = best_of_each(pairs)
        measured = ratio(*best)
        if len(pairs) > 1:
            each = ", ".join(times(r) for _, _, r in pairs)
            cpus = f"{us(best[0])} with vs {us(best[1])} without"
            shown = (
                f"{fine_times(measured)} (best of {len(pairs)} runs each: {cpus}; the pairs: {each}, "
                f"median {fine_times(median([r for _, _, r in pairs]))})"
            )
        else:
            a, b, _ = pairs[0] if pairs else (math.nan, math.nan, math.nan)
            shown = f"{fine_times(measured)} ({us(a)} with vs {us(b)} without)"
        target = f"server CPU per delta with the turn log ≤ {LOG_CPU_LIMIT:.2f} × without it (baseline), "
        out.append(at_most(target + resume_where(res, level), measured, LOG_CPU_LIMIT, fine_times, shown))
    return out


def replay_targets(res: Results) -> list[Verdict]:
    """Resumes of a 2,000-delta turn with ``after_seq: -1``: once ended, and while it streams."""
    parley = res.of_mode("resume", "parley", "resume")
    chunks = num(value(parley, "spec", "chunks"), 0) if parley is not None else "2,000"
    live = value(parley, "live", "deltas_per_s", "p50")
    out = []
    for key, when in RESUME_MODES:
        first = value(parley, key, "first_ms", "p50")
        shown = f"{ms(first)} (p99 {ms(value(parley, key, 'first_ms', 'p99'))}, "
        shown += f"{num(value(parley, key, 'resumes'), 0)} resumes)"
        target = (
            f"resume of a {chunks}-delta turn ({when}): first replayed event p50 ≤ {FIRST_REPLAYED_MS:g} ms"
        )
        out.append(at_most(target, first, FIRST_REPLAYED_MS, ms, shown))
    for key, when in RESUME_MODES:
        replay = value(parley, key, "events_per_s", "p50")
        shown = f"{times(ratio(replay, live))} ({rate(replay)} vs live {rate(live)}, p50s)"
        what = "whole replay" if key == "ended" else "replay up to the live head"
        target = f"resume of a {chunks}-delta turn ({when}): {what} at ≥ the live rate of one unpaced stream"
        out.append(at_least(target, ratio(replay, live), 1.0, times, shown))
    return out


def retained_targets(res: Results) -> list[Verdict]:
    """Reported, not bounded: server RSS growth per ended turn kept, beside the log's own accounting and the
    baseline's growth for the same turns (what is not the log's)."""
    parley = res.of_mode("resume", "parley", "retain")
    baseline = res.of_mode("resume", "baseline", "retain")
    phases = parley.load.get("phases", []) if parley is not None else []
    if not phases:
        return [Verdict("memory per retained ended turn reported", "–", None)]
    before = {p["deltas"]: p for p in (baseline.load.get("phases", []) if baseline is not None else [])}
    out = []
    for phase in phases:
        growth, accounted = float(phase["per_turn_bytes"]), float(phase["accounted_per_turn"])
        other = float(before[phase["deltas"]]["per_turn_bytes"]) if phase["deltas"] in before else math.nan
        shown = (
            f"RSS +{size(growth)} per turn ({phase['turns']} turns); the log accounts {size(accounted)}; "
            f"baseline +{size(other)}"
        )
        met = None if math.isnan(growth) or math.isnan(accounted) else True
        out.append(
            Verdict(f"memory per retained ended turn reported, {phase['deltas']}-delta turns", shown, met)
        )
    return out


def resume_targets(res: Results) -> list[Verdict]:
    return [*log_cpu_targets(res), *replay_targets(res), *retained_targets(res)]


def verdicts(res: Results) -> list[Verdict]:
    groups = (cpu_targets, throughput_targets, coalesce_targets, ttft_targets, cancel_targets, memory_targets)
    more = (persist_targets, paced_targets, slow_targets, resume_targets)
    return [v for group in (*groups, *more) for v in group(res)]


def rss_growth(record: RunRecord) -> dict[str, float]:
    """Peak RSS in the middle and last thirds of a slow-reader run; bounded: the last within 10% + 8 MiB."""
    series = [(float(t), float(r)) for t, r in record.load.get("rss", [])]
    if len(series) < 6:
        return {"middle": math.nan, "late": math.nan, "bounded": 0.0}
    end = series[-1][0]
    middle = max((r for t, r in series if end / 3 <= t < 2 * end / 3), default=math.nan)
    late = max((r for t, r in series if t >= 2 * end / 3), default=math.nan)
    return {"middle": middle, "late": late, "bounded": float(late <= 1.10 * middle + 8 * MIB)}
