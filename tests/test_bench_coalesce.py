"""The ``coalesce`` scenario: model deltas counted from characters (a coalesced frame of k deltas counts k),
its ``PARLEY_COALESCE_MS`` reaching that scenario's Parley server only, and its verdict and report section.

No server starts here: the driver is fed frames as the floor and Parley would send them, and the harness is
stopped where it would start Parley.
"""

from __future__ import annotations

import asyncio
import io
import math
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.drivers import Recorder, StreamDriver, TurnLoad, Window, deltas_in
from bench.floor import build_turn
from bench.frames import answer_text
from bench.harness import Context, Live, RunRecord, parley_overrides, run_case, start_server
from bench.report import render
from bench.results import Results
from bench.run import describe_plan, summary_line
from bench.scenarios import SCENARIOS, Scenario, build
from bench.servers import PARLEY_BENCH_SETTINGS, ParleySource, clean_env, parley_env
from bench.targets import coalesce_targets, judge_at_least, percent, verdicts
from parley.answer import Answer, TextSender
from parley.providers.demo import split_answer

RID = "0" * 32
TARGET = "delivered deltas/s at 100 unpaced streams, coalescing on ≥ 1.5 × floor"

# -- counting model deltas ---------------------------------------------------------------------------------


class FakeClient:
    """What a ``StreamDriver`` needs of a connection: it keeps what is sent, reads nothing by itself."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_text(self, text: bytes) -> None:
        self.sent.append(text)

    def abort(self) -> None:
        pass


class Done:
    """The driver's ``done`` future, without an event loop."""

    def __init__(self) -> None:
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, _: None) -> None:
        self.finished = True


def driver_for(chunks: int, delta_chars: int = 8) -> StreamDriver:
    """A driver whose one turn is sent, inside an open measuring window."""
    rec = Recorder(Window(start=0.0, end=math.inf))
    load = TurnLoad(chunks, delta_chars, max_turns=1)
    driver = StreamDriver(FakeClient(), load, rec, random.Random(1), Done())  # type: ignore[arg-type]
    driver.start()
    return driver


def text_frame(content: str, seq: int) -> bytes:
    return orjson.dumps({"type": "text", "request_id": RID, "seq": seq, "content": content})


def play(driver: StreamDriver, texts: list[str]) -> None:
    """A completed turn: working, the text events, dbOperationExecuted, fullProcessComplete."""
    frames = [orjson.dumps({"type": "working", "request_id": RID, "seq": 0})]
    frames += [text_frame(t, i + 1) for i, t in enumerate(texts)]
    frames.append(orjson.dumps({"type": "dbOperationExecuted", "content": "{}", "request_id": RID}))
    frames.append(orjson.dumps({"type": "fullProcessComplete", "status": "completed", "request_id": RID}))
    for at, frame in enumerate(frames, start=1):
        driver.on_frame(frame, float(at))


def test_deltas_in_counts_whole_deltas_completed_by_an_event() -> None:
    assert deltas_in(0, 8, 8) == 1
    assert deltas_in(8, 24, 8) == 3  # a coalesced event of three deltas
    assert deltas_in(0, 0, 8) == 0
    assert deltas_in(0, 4, 8) == 0  # half a delta: counted with its last character
    assert deltas_in(4, 8, 8) == 1


def test_a_coalesced_event_of_k_deltas_counts_k_and_one_frame() -> None:
    pieces = split_answer(answer_text(6, 8), 6)
    driver = driver_for(6)
    play(driver, [pieces[0], "".join(pieces[1:4]), "".join(pieces[4:])])  # 1 + 3 + 2 deltas

    rec = driver.rec
    assert (rec.deltas, rec.deltas_window) == (6, 6)
    assert (rec.frames, rec.frames_window) == (3, 3)
    assert rec.statuses == {"completed": 1}
    assert rec.error_total == 0, rec.error_samples
    assert len(rec.gaps_ms) == 2  # between frames, as the client sees them


def test_the_floors_frames_count_one_delta_each_exactly() -> None:
    """The floor sends the demo model's cut, one delta per event: deltas = frames = chunks."""
    turn = build_turn(answer_text(200, 8), 200, 3, "demo")
    texts = [orjson.loads(t.render(f'"{RID}"'))["content"] for t in turn.deltas]
    driver = driver_for(200)
    play(driver, texts)
    assert driver.rec.deltas == driver.rec.frames == 200
    assert driver.rec.error_total == 0


async def test_parleys_coalesced_frames_count_the_models_deltas_exactly() -> None:
    """Parley's own TextSender, fed the demo model's deltas faster than its window: fewer frames, all the
    deltas counted."""
    pieces = split_answer(answer_text(40, 8), 40)
    sent: list[str] = []

    def send(piece: str) -> str:
        sent.append(piece)
        return piece

    sender = TextSender(send, Answer(), 0.02)
    for piece in pieces:
        sender.add(piece)
        await asyncio.sleep(0)
    sender.flush()
    assert 1 < len(sent) < len(pieces)
    assert len(sent[0]) == 8  # the first delta is never held back

    driver = driver_for(40)
    play(driver, sent)
    assert driver.rec.deltas == 40
    assert driver.rec.frames == len(sent)
    assert driver.rec.error_total == 0


def test_a_completed_answer_of_another_length_is_an_error() -> None:
    driver = driver_for(6)
    play(driver, ["x" * 8] * 5)
    assert driver.rec.deltas == 5
    assert driver.rec.errors == {"answer of another length": 1}


def test_cancel_points_and_deltas_in_flight_are_model_deltas() -> None:
    driver = driver_for(10)
    turn = driver.turn
    assert turn is not None
    turn.cancel_at, turn.parts = 3, []
    frames = [text_frame("x" * 16, 1), text_frame("x" * 16, 2), text_frame("x" * 24, 3)]
    for at, frame in enumerate(frames, start=1):
        driver.on_frame(frame, float(at))
    assert turn.cancel_sent is not None  # at 4 deltas ≥ 3, after the second event
    assert turn.in_flight == 3  # the third event: three deltas in flight
    assert b'"type":"cancel"' in driver.client.sent[-1]  # type: ignore[attr-defined]


# -- the scenario and its Parley setting -------------------------------------------------------------------


def test_coalesce_is_the_sweeps_100_stream_case_with_its_own_window() -> None:
    assert SCENARIOS.index("coalesce") == SCENARIOS.index("sweep") + 1
    full, sweep = build("coalesce", quick=False), build("sweep", quick=False)
    assert [c.level for c in full.cases] == [100]
    assert full.cases[0].load == next(c.load for c in sweep.cases if c.level == 100)
    assert full.parley_env == {"PARLEY_COALESCE_MS": "20"}
    assert full.servers == ("floor", "parley")
    assert sweep.parley_env == {}

    quick = build("coalesce", quick=True)
    assert [c.level for c in quick.cases] == [50]
    assert quick.cases[0].load["measure_s"] <= 2.0
    assert quick.parley_env == full.parley_env


def context(tmp_path: Path, run_env: dict[str, str] | None = None) -> Context:
    live = Live(1, io.StringIO())
    return Context({0}, {0}, tmp_path, live, ParleySource(None, "test"), dict(run_env or {}))


def test_the_scenarios_window_wins_over_the_runs_settings_and_adds_to_them(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"PARLEY_COALESCE_MS": "50", "PARLEY_LOG_LEVEL": "info"})
    assert parley_overrides(build("coalesce", True), ctx) == {
        "PARLEY_COALESCE_MS": "20",
        "PARLEY_LOG_LEVEL": "info",
    }
    assert parley_overrides(build("sweep", True), ctx) == ctx.parley_env


async def test_the_window_reaches_that_scenarios_parley_server_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The env the harness hands ``start_parley``, and the process env built from it."""
    asked: list[dict[str, str]] = []

    def fake_start_parley(*args: Any, **kwargs: Any) -> str:
        asked.append(dict(args[-1]))
        return "started"

    monkeypatch.setattr("bench.harness.start_parley", fake_start_parley)
    monkeypatch.setenv("PARLEY_COALESCE_MS", "7")  # the caller's own PARLEY_* never reach the server
    ctx = context(tmp_path)
    for name in ("coalesce", "sweep"):
        assert await start_server("parley", build(name, True), ctx, None) == "started"  # type: ignore[comparison-overlap]

    windows = [clean_env(parley_env(1, "s", tmp_path, None, extra))["PARLEY_COALESCE_MS"] for extra in asked]
    assert windows == ["20", PARLEY_BENCH_SETTINGS["PARLEY_COALESCE_MS"]]
    assert PARLEY_BENCH_SETTINGS["PARLEY_COALESCE_MS"] == "0"  # the run's setting stays off


async def test_the_parley_record_keeps_its_settings_the_floors_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_server(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no server in this test")

    monkeypatch.setattr("bench.harness.start_parley", no_server)
    monkeypatch.setattr("bench.harness.start_floor", no_server)
    scenario = build("coalesce", True)
    parley = await run_case(scenario, scenario.cases[0], "parley", context(tmp_path))
    floor = await run_case(scenario, scenario.cases[0], "floor", context(tmp_path))

    assert parley.failure == floor.failure == "no server in this test"
    assert parley.parley_env == {"PARLEY_COALESCE_MS": "20"}
    assert parley.coalesce_ms == 20
    assert (floor.parley_env, floor.coalesce_ms) == ({}, 0)


# -- the verdict and the report ----------------------------------------------------------------------------


def load(deltas_per_s: float, deltas_per_frame: float, cpu_us: float) -> dict[str, Any]:
    window = 8.0
    deltas = int(deltas_per_s * window)
    frames = round(deltas / deltas_per_frame)
    return {
        "mode": "stream",
        "spec": {"delta_chars": 8},
        "deltas_per_s": deltas_per_s,
        "frames_per_s": frames / window,
        "deltas_per_frame": deltas / frames,
        "deltas_window": deltas,
        "frames_window": frames,
        "server_cpu_per_delta_us": cpu_us,
        "server_cpu_pct": 90.0,
        "gen_cpu_pct": 40.0,
        "ttft_ms": {"p50": 4.0, "p99": 20.0, "n": 500},
        "gap_ms": {"p99": 21.5},
        "error_total": 0,
        "statuses": {"completed": 10},
        "shape": {"events": 203 if deltas_per_frame == 1 else 6, "bytes": 29802},
        "distinct_shapes": 1 if deltas_per_frame == 1 else 9,
    }


def records(parley_rate: float, level: int = 100) -> list[RunRecord]:
    label = f"{level} streams"
    floor = RunRecord("coalesce", label, level, "floor", "none", load=load(80_000, 1, 11.0))
    parley = RunRecord("coalesce", label, level, "parley", "sqlite", load=load(parley_rate, 40, 5.5))
    parley.parley_env = {"PARLEY_COALESCE_MS": "20"}
    return [floor, parley]


def meta(quick: bool = False) -> dict[str, Any]:
    return {"quick": quick, "parley_env": {}, "scenarios": describe_plan([build("coalesce", quick)])}


def test_the_verdict_is_model_deltas_per_second_against_the_floor() -> None:
    (met,) = coalesce_targets(Results(records(160_000)))
    assert (met.target, met.met) == (TARGET, True)
    assert met.measured.startswith("2.00× (160,000/s vs 80,000/s; Parley at `PARLEY_COALESCE_MS=20`, 40.0")

    (missed,) = coalesce_targets(Results(records(100_000)))
    assert missed.met is False
    assert missed.gap == "by 0.25× floor (17% short)"

    assert TARGET in [v.target for v in verdicts(Results(records(160_000)))]
    assert coalesce_targets(Results([]))[0].met is None
    assert coalesce_targets(Results(records(160_000, level=50)))[0].met is None  # --quick: 50 streams


def test_a_parley_run_without_coalescing_is_not_judged() -> None:
    runs = records(160_000)
    runs[1].parley_env = {}
    (verdict,) = coalesce_targets(Results(runs))
    assert verdict.met is None
    assert "coalescing off" in verdict.measured


def test_the_report_has_the_scenarios_section_and_says_coalescing_is_off_elsewhere() -> None:
    report = render(records(160_000), {}, meta(), [])

    targets = report.split("## Targets", 1)[1].split("\n## ", 1)[0]
    assert "coalescing off, every delta is its own frame, except in the `coalesce` scenario" in targets
    assert f"| {TARGET} | 2.00× " in targets
    assert "| met |" in targets.split(TARGET, 1)[1].splitlines()[0]

    section = report.split("## Unpaced, 100 streams, Parley coalescing deltas", 1)[1].split("\n## ", 1)[0]
    assert "| floor | 80,000/s | 80,000/s | 1.00 | 4.00 ms / 20.0 ms | 21.5 ms | 11.0 µs |" in section
    assert "| Parley, coalescing 20 ms | 160,000/s | 4,000/s | 40.00 |" in section
    assert "| Parley coalescing ÷ floor | 2.00× | 0.05× |  | +0.00 ms / +0.00 ms |  | 0.50× |" in section
    assert "`PARLEY_COALESCE_MS=20` in this scenario only (the run's other scenarios: `0`)" in section

    settings = report.split("## Settings", 1)[1]
    assert "| `PARLEY_COALESCE_MS` | `0` |" in settings
    assert "| coalesce | `PARLEY_COALESCE_MS=20` |" in settings
    assert "frames differ" not in report  # fewer frames by design: not a drift


def test_counts_that_disagree_without_coalescing_are_flagged() -> None:
    runs = records(160_000)
    runs[0].load["deltas_window"] += 1  # the floor never coalesces
    report = render(runs, {}, meta(), [])
    assert "coalesce / 100 streams / floor: 640,001 deltas counted" in report
    assert "coalesce / 100 streams / parley:" not in report.split("## Observations", 1)[1]


def test_the_live_summary_shows_frames_when_they_carry_several_deltas() -> None:
    floor, parley = records(160_000)
    assert "frames/s 4,000/s (40.0 deltas/frame)" in summary_line(parley)
    assert "frames/s" not in summary_line(floor)


def test_a_full_plan_describes_the_scenarios_parley_settings() -> None:
    plan = describe_plan([build(name, False) for name in ("sweep", "coalesce")])
    assert plan["coalesce"]["parley_env"] == {"PARLEY_COALESCE_MS": "20"}
    assert plan["sweep"]["parley_env"] == {}
    assert isinstance(build("coalesce", False), Scenario)


def test_a_near_miss_is_not_rounded_away() -> None:
    """94.8% of a 95% target is missed by 0.2%, and the report must not say "by 0% (0% short)"."""
    assert judge_at_least(0.948, 0.95, lambda x: f"{100 * x:.1f}%") == (False, "by 0.2% (0.2% short)")
    assert percent(0.17) == "17%"
