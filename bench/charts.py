"""PNG charts of a run, drawn with matplotlib's object API (no pyplot, no global figure state)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench.harness import RunRecord
from bench.metrics import MIB
from bench.results import PACED_RATE, Results, value

COLORS = {"floor": "#7f7f7f", "parley": "#1f77b4"}
NAMES = {"floor": "floor", "parley": "Parley"}
Chart = tuple[str, str]
CHART_FILES = (
    "throughput.png",
    "first_text.png",
    "paced_gap.png",
    "cpu_per_delta.png",
    "idle_memory.png",
    "slow_rss.png",
)


def new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(7.5, 4.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def series(
    res: Results, scenario: str, server: str, get: Callable[[RunRecord], float]
) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for level in res.levels(scenario):
        record = res.find(scenario, server, level)
        y = get(record) if record is not None else math.nan
        if not math.isnan(y):
            xs.append(level)
            ys.append(y)
    return xs, ys


def plot_servers(
    ax: Axes, res: Results, scenario: str, get: Callable[[RunRecord], float], label: str, style: str = "-o"
) -> bool:
    drawn = False
    for server in ("floor", "parley"):
        xs, ys = series(res, scenario, server, get)
        if xs:
            ax.plot(xs, ys, style, color=COLORS[server], label=f"{NAMES[server]} {label}".strip())
            drawn = True
    return drawn


def log_x(ax: Axes, levels: list[int]) -> None:
    """A log x axis labelled with the levels themselves (10, 100, 1,000), not powers of ten."""
    ax.set_xscale("log")
    ax.set_xticks(levels, [f"{n:,}" for n in levels])
    ax.minorticks_off()


def save(fig: Figure, ax: Axes, out: Path, name: str, caption: str) -> Chart:
    ax.legend(fontsize=8)
    fig.savefig(out / name)
    return name, caption


def throughput(res: Results, out: Path) -> Chart | None:
    fig, ax = new_axes("Delivered deltas per second", "concurrent streams", "deltas/s")
    drawn = plot_servers(ax, res, "sweep", lambda r: value(r, "deltas_per_s"), "unpaced")
    if plot_servers(ax, res, "paced", lambda r: value(r, "deltas_per_s"), "paced 30/s", "--s"):
        levels = res.levels("paced")
        ax.plot(levels, [n * PACED_RATE for n in levels], ":", color="black", label="asked (paced)")
        drawn = True
    if not drawn:
        return None
    log_x(ax, sorted({*res.levels("sweep"), *res.levels("paced")}))
    return save(fig, ax, out, "throughput.png", "Delivered deltas/s, unpaced and paced at 30/s")


def first_text(res: Results, out: Path) -> Chart | None:
    fig, ax = new_axes("Time to first text, unpaced", "concurrent streams", "ms (log)")
    drawn = plot_servers(ax, res, "sweep", lambda r: value(r, "ttft_ms", "p50"), "p50")
    drawn |= plot_servers(ax, res, "sweep", lambda r: value(r, "ttft_ms", "p99"), "p99", "--s")
    if not drawn:
        return None
    log_x(ax, res.levels("sweep"))
    ax.set_yscale("log")
    return save(
        fig, ax, out, "first_text.png", "Time to first text (request sent → first delta read), unpaced"
    )


def paced_gap(res: Results, out: Path) -> Chart | None:
    fig, ax = new_axes("Inter-event gap p99, paced at 30 deltas/s", "concurrent streams", "ms")
    if not plot_servers(ax, res, "paced", lambda r: value(r, "gap_ms", "p99"), "gap p99"):
        return None
    ax.axhline(100, color="red", linestyle=":", label="target < 100 ms")
    ax.axhline(1000 / PACED_RATE, color="black", linestyle=":", linewidth=0.8, label="pace (33 ms)")
    log_x(ax, res.levels("paced"))
    return save(fig, ax, out, "paced_gap.png", "Gap between deltas of a turn, p99, paced streams")


def cpu_per_delta(res: Results, out: Path) -> Chart | None:
    fig, ax = new_axes("Server CPU per delivered delta", "concurrent streams", "µs per delta")
    drawn = plot_servers(ax, res, "sweep", lambda r: value(r, "server_cpu_per_delta_us"), "unpaced")
    drawn |= plot_servers(ax, res, "paced", lambda r: value(r, "server_cpu_per_delta_us"), "paced", "--s")
    if not drawn:
        return None
    log_x(ax, sorted({*res.levels("sweep"), *res.levels("paced")}))
    ax.set_ylim(bottom=0)
    return save(fig, ax, out, "cpu_per_delta.png", "Server CPU per delivered delta")


def idle_memory(res: Results, out: Path) -> Chart | None:
    fig, ax = new_axes("Server memory with idle connections", "open connections", "RSS (MiB)")
    drawn = False
    for server in ("floor", "parley"):
        record = res.find("idle", server)
        points = record.load.get("series", []) if record else []
        if points:
            ax.plot(
                [p[0] for p in points],
                [p[1] / MIB for p in points],
                "-o",
                color=COLORS[server],
                label=NAMES[server],
            )
            drawn = True
    if not drawn:
        return None
    return save(fig, ax, out, "idle_memory.png", "Server RSS as idle connections are opened")


def slow_rss(res: Results, out: Path) -> Chart | None:
    fig, ax = new_axes("Server memory with slow readers", "seconds since start", "RSS (MiB)")
    drawn = False
    for server in ("floor", "parley"):
        record = res.find("slow", server)
        points = record.load.get("rss", []) if record else []
        if points:
            ax.plot(
                [p[0] for p in points],
                [p[1] / MIB for p in points],
                color=COLORS[server],
                label=NAMES[server],
            )
            drawn = True
    if not drawn:
        return None
    ax.set_ylim(bottom=0)
    return save(fig, ax, out, "slow_rss.png", "Server RSS over time while clients stall and leave")


def draw(records: list[RunRecord], out: Path) -> list[Chart]:
    """Draw every chart the run has data for into ``out``; return (file name, caption) pairs."""
    res = Results(records)
    charts = []
    for chart in (throughput, first_text, paced_gap, cpu_per_delta, idle_memory, slow_rss):
        made = chart(res, out)
        if made is not None:
            charts.append(made)
    return charts
