"""The `metrics` scenario (issue #15: Prometheus metrics on ÷ ``PARLEY_METRICS=false``): the plan, the
``nometrics`` server's settings, the verdicts and the report section.

No server starts here: the harness is stopped where it would start a process.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, cast

import pytest

from bench.harness import Context, Live, RunRecord, database_of, start_deployment
from bench.report import render
from bench.results import Results
from bench.run import describe_plan
from bench.scenarios import SCENARIOS, build
from bench.servers import VARIANTS, ParleySource, Server, parley_env
from bench.targets import METRICS_CPU_LIMIT, metrics_targets, verdicts


def test_the_metrics_scenario_runs_both_kinds_on_sqlite_five_times_over() -> None:
    assert "metrics" in SCENARIOS
    full = build("metrics", quick=False)
    assert full.database == "sqlite" and not full.profiled
    assert [full.servers_for(c) for c in full.cases] == [("nometrics", "parley")] * 2
    assert [c.level for c in full.cases] == [1, 100]
    assert [c.repeats for c in full.cases] == [5, 5]
    assert all(c.load["chunks"] == 200 and "delay_ms" not in c.load for c in full.cases)
    quick = build("metrics", quick=True)
    assert all(c.repeats == 1 and c.load["measure_s"] <= 2.0 for c in quick.cases)
    assert [database_of(kind, full) for kind in full.servers] == ["sqlite", "sqlite"]


def test_nometrics_is_parley_with_metrics_off_and_parley_keeps_the_default() -> None:
    assert not VARIANTS["nometrics"].metrics and VARIANTS["parley"].metrics
    on = parley_env(1, "s", Path("d"), None, {"PARLEY_COALESCE_MS": "0"})
    assert "PARLEY_METRICS" not in on  # Parley's default: on
    # the variant is what it is: `--parley-env PARLEY_METRICS=true` does not turn it back on
    off = parley_env(1, "s", Path("d"), None, {"PARLEY_METRICS": "true"}, metrics=False)
    assert off["PARLEY_METRICS"] == "false"


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid


async def test_the_harness_starts_nometrics_with_metrics_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[dict[str, Any]] = []

    def fake_start_parley(*args: Any, **kwargs: Any) -> Server:
        asked.append(kwargs)
        return Server("parley", cast(Any, FakeProc(100)), 8000, Path("log"), Path("."), "s", args[2])

    monkeypatch.setattr("bench.harness.start_parley", fake_start_parley)
    ctx = Context({0}, {1}, tmp_path, Live(1, io.StringIO()), ParleySource(None, "working tree"))
    scenario = build("metrics", True)
    await start_deployment("nometrics", scenario, ctx, None)
    await start_deployment("parley", scenario, ctx, None)
    assert [a["metrics"] for a in asked] == [False, True]


def stream(**fields: Any) -> dict[str, Any]:
    return {"mode": "stream", "error_total": 0, "gen_cpu_pct": 40.0, "server_cpu_pct": 95.0, **fields}


def record(level: int, server: str, cpu: float, repeat: int = 0, status: int | None = None) -> RunRecord:
    label = "1 stream, 200 deltas" if level == 1 else f"{level} streams"
    made = RunRecord("metrics", label, level, server, "sqlite", load=stream(server_cpu_per_delta_us=cpu))
    made.repeat = repeat
    on = server == "parley"
    made.metrics_probe = {"status": status or (200 if on else 404), "text_deltas": 1000.0 if on else None}
    return made


def metrics_records() -> list[RunRecord]:
    runs = []
    for repeat, (off, on) in enumerate([(10.0, 10.5), (9.6, 10.2), (10.4, 10.6)]):
        runs += [record(1, "nometrics", off, repeat), record(1, "parley", on, repeat)]
    runs += [record(100, "nometrics", 12.0), record(100, "parley", 12.2)]
    return runs


def test_the_metrics_verdicts() -> None:
    found = metrics_targets(Results(metrics_records()))
    single = next(v for v in found if "single stream" in v.target)
    assert f"≤ {METRICS_CPU_LIMIT:.2f} × with `PARLEY_METRICS=false`" in single.target
    # best of each: 10.2 / 9.6 = 1.0625 (shown 1.062), the pairs' median 1.050 beside it
    assert single.met is False and single.measured.startswith(
        "1.062× (best of 3 runs each: 10.2 µs metrics on vs 9.6 µs off"
    )
    assert "median 1.050×" in single.measured
    many = next(v for v in found if "100 unpaced streams" in v.target)
    assert many.met is True and many.measured.startswith("1.017×")
    switch = next(v for v in found if "`GET /metrics`" in v.target)
    assert switch.met is True and switch.measured == "on: 4/4 runs 200 with deltas counted; off: 4/4 runs 404"
    assert single.target in [v.target for v in verdicts(Results(metrics_records()))]
    assert metrics_targets(Results([])) == []

    wrong = [*metrics_records(), record(100, "nometrics", 12.0, repeat=1, status=200)]
    assert next(v for v in metrics_targets(Results(wrong)) if "`GET /metrics`" in v.target).met is False


def test_the_report_has_the_metrics_section() -> None:
    meta = {"quick": False, "parley_env": {}, "scenarios": describe_plan([build("metrics", False)])}
    report = render(metrics_records(), {}, meta, [])
    section = report.split("## Metrics: Prometheus on and off", 1)[1].split("\n## ", 1)[0]
    assert "`PARLEY_METRICS=false`" in section
    assert "| 1 stream, 200 deltas, run 1 | metrics off |" in section
    assert "| 1 stream, 200 deltas, run 1 | metrics on |" in section
    assert "| 1 stream, 200 deltas: best of each | metrics on ÷ metrics off |  |  | 1.062× |" in section
    assert "metrics on: 200 (4 runs); metrics off: 404 (4 runs)" in section
    assert "with metrics on ≤ 1.03" in report.split("## Targets", 1)[1].split("\n## ", 1)[0]
