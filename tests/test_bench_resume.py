"""The ``resume`` scenario: the log accounting read from frames (bench/replay.py), the readers of live and
resumed turns, the baseline server kind, and the scenario's verdicts and report section.

No server starts here: the log's frames come from Parley's own ``TurnLog`` and ``Follower``, the readers are
fed frames by hand, and the harness is stopped where it would start a server.
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

from bench import replay as bench_replay
from bench.drivers import Recorder, TurnLoad, Window
from bench.harness import Context, Live, RunRecord, run_case, start_server
from bench.instructions import Count, table, totals
from bench.replay import (
    AccountingDriver,
    Ping,
    Replay,
    TurnOwner,
    event_body,
    first_difference,
    live_rate,
    turn_log_bytes,
)
from bench.report import render
from bench.results import Results
from bench.run import baseline_source, describe_plan, parse_args, run_order, summary_line
from bench.scenarios import SCENARIOS, build
from bench.servers import ParleySource
from bench.targets import log_cpu_targets, replay_targets, retained_targets, verdicts
from parley.protocol import TurnEmitter
from parley.streams import Follower, TurnStreams
from tests.resume_helpers import Outlet

RID = "a" * 32

# -- what the log accounts, from the frames ----------------------------------------------------------------


def logged_turn(deltas: list[str]) -> tuple[TurnStreams, list[bytes]]:
    """A turn logged by Parley's own emitter and log, and the frames its follower was handed."""
    registry = TurnStreams(600.0, 1 << 30, 1 << 28)
    log = registry.open("customer", RID)
    out = Outlet()
    log.attach(Follower(log, out, "camel"))  # type: ignore[arg-type]
    emitter = TurnEmitter(log, RID)
    emitter.working("text", "demo", "demo")
    emitter.set_session("5f0c1a52-3f1e-4b7a-9a51-0e7d2a8f4c11")
    for delta in deltas:
        emitter.text(delta)
    emitter.db_operation("u-1", "a-1", "completed", {"input_tokens": 3})
    emitter.complete_turn("completed")
    return registry, [f.encode() for f in out.frames]


@pytest.mark.parametrize("count", [6, 64, 150])
def test_the_accounting_read_from_the_frames_is_the_logs_own_total(count: int) -> None:
    pieces = ["Parley s", 'quo"te', "new\nline", "héllo wörld", "€ and 😀", "x" * 8]
    registry, frames = logged_turn([pieces[n % len(pieces)] for n in range(count)])
    assert len(frames) == count + 3  # working, the texts, dbOperationExecuted, fullProcessComplete
    assert turn_log_bytes(frames) == registry.total


def test_the_body_is_the_frames_tail_after_the_seq() -> None:
    frame = b'{"type":"text","request_id":"r","session_id":"s","seq":12,"content":"a,\\"seq\\":1"}'
    assert event_body(frame) == b'"content":"a,\\"seq\\":1"'


def test_frames_that_are_no_turn_event_account_nothing() -> None:
    others = [
        b'{"type":"websocketReady","content":"Backend ready","connection_id":"c"}',
        b'{"type":"pong","timestamp":"2026-01-01T00:00:00Z"}',
        b'{"type":"error","content":"gone","stage":"validation","code":"stream_expired","request_id":"r"}',
    ]
    for frame in others:
        assert event_body(frame) is None
    assert turn_log_bytes(others) == 0


# -- rates and comparisons ---------------------------------------------------------------------------------


def test_the_live_rate_is_between_the_first_and_the_last_text() -> None:
    assert live_rate(2001, 1.0, 2.0) == 2000.0
    assert math.isnan(live_rate(1, 1.0, 1.0))
    assert math.isnan(live_rate(10, None, 2.0))


def test_first_difference_finds_changed_missing_and_extra_frames() -> None:
    assert first_difference([b"a", b"b"], [b"a", b"b"]) is None
    assert first_difference([b"a", b"x"], [b"a", b"b"]) == 1
    assert first_difference([b"a"], [b"a", b"b"]) == 1
    assert first_difference([b"a", b"b", b"c"], [b"a", b"b"]) == 2


# -- the readers -------------------------------------------------------------------------------------------


class FakeClient:
    """What the readers need of a connection: a loop for their futures, a sink, and what they send."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sent: list[bytes] = []
        self.sink: Any = None
        self.on_close: Any = None

    def send_text(self, text: bytes) -> None:
        self.sent.append(text)

    def abort(self) -> None:
        pass


async def test_a_replay_times_its_first_event_its_catching_up_and_its_end() -> None:
    _, frames = logged_turn(["Parley s"] * 5)
    client = FakeClient()
    replay = Replay(client, RID, head=len(frames) - 1)  # type: ignore[arg-type]
    replay.send()
    assert orjson.loads(client.sent[-1]) == {"type": "resume", "request_id": RID, "after_seq": -1}
    replay.sent = 10.0
    for at, frame in enumerate(frames, start=1):
        client.sink(frame, 10.0 + at / 1000)
    assert replay.done.done()
    assert replay.first_ms == pytest.approx(1.0)
    assert replay.replay_ms == pytest.approx(len(frames))
    assert replay.events_per_s == pytest.approx(len(frames) / (len(frames) / 1000))
    assert first_difference(replay.frames, frames) is None


async def test_a_refused_resume_ends_the_replay_with_its_code() -> None:
    client = FakeClient()
    replay = Replay(client, RID, head=10)  # type: ignore[arg-type]
    replay.send()
    refusal = {"type": "error", "content": "…", "stage": "validation", "code": "stream_expired"}
    client.sink(orjson.dumps({**refusal, "request_id": RID}), 1.0)
    assert replay.done.done()
    assert replay.refused == "stream_expired"
    assert replay.frames == []
    assert math.isnan(replay.first_ms)


async def test_the_owner_keeps_every_frame_and_counts_the_texts() -> None:
    _, frames = logged_turn(["Parley s"] * 4)
    client = FakeClient()
    rec = Recorder(Window())
    owner = TurnOwner(client, rec, 8)  # type: ignore[arg-type]
    turn = owner.send(4, 0.0)
    for at, frame in enumerate(frames):
        client.sink(frame, float(at))
    assert turn.done.done() and turn.status == "completed"
    assert turn.frames == frames
    assert (turn.texts, rec.deltas) == (4, 4)
    assert turn.deltas_per_s == pytest.approx(3 / 3)  # texts at t = 1..4


async def test_a_ping_measures_the_round_trip_to_its_pong() -> None:
    client = FakeClient()
    ping = Ping(client)  # type: ignore[arg-type]
    ping.send()
    ping.sent = 1.0
    client.sink(b'{"type":"text","seq":1,"content":"x"}', 1.0005)  # not the pong
    client.sink(b'{"type":"pong","timestamp":"t"}', 1.002)
    assert ping.done.done()
    assert ping.rtt_ms == pytest.approx(2.0)


async def test_the_accounting_driver_adds_up_what_the_logs_account() -> None:
    registry, frames = logged_turn(["Parley s"] * 3)
    client = FakeClient()
    rec = Recorder(Window())
    load = TurnLoad(3, 8, max_turns=1)
    driver = AccountingDriver(client, load, rec, random.Random(1), client.loop.create_future())
    driver.start()
    for at, frame in enumerate(frames):
        client.sink(frame, float(at))
    assert driver.accounted == registry.total
    assert driver.events == len(frames)
    assert driver.done.done()


# -- the scenario, the baseline server -----------------------------------------------------------------------


def test_the_resume_scenario_runs_each_case_on_its_servers() -> None:
    assert "resume" in SCENARIOS
    full = build("resume", quick=False)
    assert full.servers == ("floor", "baseline", "parley")
    assert not full.profiled
    by_mode = {c.load["mode"]: c for c in full.cases if c.load["mode"] != "stream"}
    streams_cases = [c for c in full.cases if c.load["mode"] == "stream"]
    assert [c.level for c in streams_cases] == [1, 100]
    assert all(full.servers_for(c) == full.servers and c.repeats == 5 for c in streams_cases)
    assert full.servers_for(by_mode["resume"]) == ("parley",)
    assert full.servers_for(by_mode["retain"]) == ("baseline", "parley")
    assert by_mode["resume"].load["chunks"] == 2000
    assert by_mode["resume"].load["resumes"] == 200
    assert len({c.level for c in full.cases}) == len(full.cases)  # levels tell the cases apart

    quick = build("resume", quick=True)
    assert all(c.repeats == 1 for c in quick.cases)
    assert all(c.load.get("measure_s", 0) <= 2.0 for c in quick.cases)
    plan = describe_plan([quick])["resume"]["cases"]
    assert [c["servers"] for c in plan][-2:] == [["parley"], ["baseline", "parley"]]


def context(tmp_path: Path, baseline: ParleySource | None) -> Context:
    ctx = Context({0}, {0}, tmp_path, Live(1, io.StringIO()), ParleySource(None, "working tree"))
    ctx.baseline = baseline
    return ctx


async def test_a_baseline_server_is_parley_from_the_baseline_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[Any, ...]] = []

    def fake_start_parley(*args: Any, **kwargs: Any) -> str:
        asked.append((args[4], kwargs.get("kind", "parley")))
        return "started"

    monkeypatch.setattr("bench.harness.start_parley", fake_start_parley)
    baseline = ParleySource(tmp_path / "old", "0a9d2ec (exported)")
    ctx = context(tmp_path, baseline)
    scenario = build("resume", True)
    for kind in ("baseline", "parley"):
        assert await start_server(kind, scenario, ctx, None) == "started"  # type: ignore[comparison-overlap]
    assert asked == [(baseline, "baseline"), (ctx.source, "parley")]


async def test_a_baseline_run_records_its_revision_and_fails_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_server(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no server in this test")

    monkeypatch.setattr("bench.harness.start_parley", no_server)
    scenario = build("resume", True)
    record = await run_case(scenario, scenario.cases[0], "baseline", context(tmp_path, None))
    assert record.failure is not None and "--baseline-rev" in record.failure
    assert record.database == "sqlite"

    baseline = ParleySource(tmp_path / "old", "0a9d2ec (exported)")
    record = await run_case(scenario, scenario.cases[0], "baseline", context(tmp_path, baseline))
    assert record.failure == "no server in this test"
    assert record.revision == "0a9d2ec (exported)"


def test_the_baseline_is_exported_only_when_a_case_runs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported: list[str] = []

    def fake_export(revision: str, dest: Path) -> ParleySource:
        exported.append(revision)
        return ParleySource(dest, f"{revision} (`--parley-rev {revision}`, exported with git archive)")

    monkeypatch.setattr("bench.run.export_revision", fake_export)
    args = parse_args(["--baseline-rev", "abc123"])
    assert baseline_source(args, [build("single", True)], tmp_path) is None
    source = baseline_source(args, [build("resume", True)], tmp_path)
    assert exported == ["abc123"]
    assert source is not None and "--baseline-rev abc123" in source.description
    assert parse_args([]).baseline_rev == "0a9d2ec"


# -- verdicts and the report ---------------------------------------------------------------------------------


def cpu_record(server: str, level: int, cpu_us: float, repeat: int = 0) -> RunRecord:
    load = {
        "mode": "stream",
        "spec": {"chunks": 200, "delta_chars": 8},
        "deltas_per_s": 1e6 / cpu_us,
        "server_cpu_per_delta_us": cpu_us,
        "server_cpu_pct": 100.0,
        "gen_cpu_pct": 50.0,
        "ttft_ms": {"p50": 2.0, "p99": 5.0},
        "error_total": 0,
        "deltas_window": 100,
        "frames_window": 100,
    }
    label = "1 stream, 200 deltas" if level == 1 else f"{level} streams"
    record = RunRecord("resume", label, level, server, "none" if server == "floor" else "sqlite", load=load)
    record.repeat = repeat
    return record


def replay_record() -> RunRecord:
    def replayed(first_p50: float, rate_p50: float) -> dict[str, Any]:
        return {
            "resumes": 200,
            "identical": 200,
            "first_ms": {"n": 200, "p50": first_p50, "p99": 3.0, "max": 4.0},
            "ping_ms": {"n": 200, "p50": 0.2, "p99": 0.5},
            "replay_ms": {"n": 200, "p50": 20.0, "p99": 30.0},
            "events": {"n": 200, "p50": 2003.0},
            "events_per_s": {"n": 200, "p50": rate_p50},
        }

    load = {
        "mode": "resume",
        "spec": {"chunks": 2000, "connections": 4},
        "live": {"turns": 5, "deltas_per_s": {"p50": 50_000.0}, "events": {"p50": 2003.0}},
        "ended": {**replayed(0.5, 100_000.0), "server_cpu_per_event_us": 4.0},
        "midturn": {**replayed(6.0, 40_000.0), "delay_ms": 2.0, "lag_ms": {"p50": 0.3, "max": 1.0}},
        "error_total": 0,
    }
    return RunRecord("resume", "resume a 2,000-delta turn", 2000, "parley", "sqlite", load=load)


def retain_record(server: str, per_turn: tuple[float, float], accounted: tuple[float, float]) -> RunRecord:
    phases = [
        {
            "turns": turns,
            "deltas": deltas,
            "rss_before": 100e6,
            "rss_after": 100e6 + turns * growth,
            "per_turn_bytes": growth,
            "slope_bytes": growth,
            "accounted_per_turn": acc,
            "events_per_turn": deltas + 3,
        }
        for (turns, deltas), growth, acc in zip(((500, 200), (48, 2000)), per_turn, accounted, strict=True)
    ]
    load = {"mode": "retain", "phases": phases, "error_total": 0}
    return RunRecord("resume", "500 ended turns kept", 500, server, "sqlite", load=load)


def resume_records() -> list[RunRecord]:
    records = []
    for repeat, (floor, base, parley) in enumerate(((8.0, 12.0, 12.6), (8.0, 12.0, 13.8), (8.0, 12.0, 12.0))):
        for level in (1, 100):
            records += [
                cpu_record("floor", level, floor, repeat),
                cpu_record("baseline", level, base, repeat),
                cpu_record("parley", level, parley, repeat),
            ]
    records.append(replay_record())
    records.append(retain_record("baseline", (6_000.0, 70_000.0), (math.nan, math.nan)))
    records.append(retain_record("parley", (24_000.0, 260_000.0), (17_000.0, 168_000.0)))
    return records


def test_the_cpu_verdict_divides_each_servers_best_run() -> None:
    single, many = log_cpu_targets(Results(resume_records()))
    assert single.target.endswith("without it (baseline), single stream, 200-delta turns")
    assert many.target.endswith("without it (baseline), 100 unpaced streams")
    assert single.met is True  # Parley's best (12.0) ÷ the baseline's best (12.0)
    assert single.measured.startswith("1.000× (best of 3 runs each: 12.0 µs with vs 12.0 µs without;")
    assert "the pairs: 1.05×, 1.15×, 1.00×, median 1.050×" in single.measured

    over = resume_records()
    for record in over:
        if record.server == "parley":
            record.load["server_cpu_per_delta_us"] = 13.8
        elif record.server == "baseline" and record.repeat == 1:
            record.load["server_cpu_per_delta_us"] = 13.0  # the baseline's noisy run is not its best
    (missed, _) = log_cpu_targets(Results(over))
    assert missed.met is False
    assert missed.measured.startswith("1.150× (best of 3 runs each")
    assert missed.gap == "by 0.050× (4.5% over)"

    hair = resume_records()  # a near miss must not read "1.10×, missed by 0.00×"
    for record in hair:
        if record.server == "parley" and record.level == 100:
            record.load["server_cpu_per_delta_us"] = 13.212
    (_, near) = log_cpu_targets(Results(hair))
    assert near.met is False
    assert near.measured.startswith("1.101×")
    assert near.gap == "by 0.001× (0.1% over)"

    (one, _) = log_cpu_targets(Results([r for r in resume_records() if r.repeat == 0]))  # --quick: one pair
    assert one.measured == "1.050× (12.6 µs with vs 12.0 µs without)"


def test_the_replay_verdicts_judge_the_first_event_and_the_rate() -> None:
    ended_first, mid_first, ended_rate, mid_rate = replay_targets(Results(resume_records()))
    assert (ended_first.met, mid_first.met) == (True, False)
    assert ended_first.measured == "0.50 ms (p99 3.00 ms, 200 resumes)"
    assert mid_first.gap == "by 1.00 ms (20% over)"
    assert (ended_rate.met, mid_rate.met) == (True, False)
    assert ended_rate.measured.startswith("2.00× (100,000/s vs live 50,000/s")


def test_memory_per_retained_turn_is_reported_beside_the_accounting_and_the_baseline() -> None:
    short, long = retained_targets(Results(resume_records()))
    assert short.met is True
    assert (
        short.measured == "RSS +23.4 KiB per turn (500 turns); the log accounts 16.6 KiB; baseline +5.9 KiB"
    )
    assert "2000-delta turns" in long.target
    (none,) = retained_targets(Results([]))
    assert none.met is None


def test_without_the_scenario_its_targets_are_not_measured() -> None:
    rows = [v for v in verdicts(Results([])) if "turn log" in v.target or "resume" in v.target]
    assert len(rows) == 6
    assert all(v.met is None for v in rows)


def test_the_report_has_the_resume_section() -> None:
    meta = {"quick": False, "parley_env": {}, "scenarios": describe_plan([build("resume", False)])}
    report = render(resume_records(), {"baseline_revision": "0a9d2ec"}, meta, [])
    section = report.split("## Resume: turn event logs", 1)[1].split("\n## ", 1)[0]
    assert "| 100 streams, run 2 | Parley | " in section
    assert "| 100 streams: median | Parley ÷ baseline |  |  |  | 1.050× |" in section
    assert "| ended turn | 200 | 0.50 ms / 3.00 ms / 4.00 ms | 0.20 ms / 0.50 ms | 2,003 |" in section
    assert "| Parley | 500 × 200 deltas | 203 |" in section
    assert "| 16.6 KiB | 1.41× | 17.6 KiB |" in section
    assert "| baseline revision | 0a9d2ec |" in report
    targets = report.split("## Targets", 1)[1].split("\n## ", 1)[0]
    assert "server CPU per delta with the turn log ≤ 1.10 × without it (baseline)" in targets


def test_the_live_summary_of_the_new_modes() -> None:
    records = resume_records()
    assert "first replayed p50 0.50 ms" in summary_line(records[-3])
    assert "500×200: RSS 23.4 KiB/turn (log 16.6 KiB)" in summary_line(records[-1])


def test_the_readers_module_keeps_its_prefixes_in_step_with_parleys_encoding() -> None:
    _, frames = logged_turn(["Parley s"])
    assert frames[1].startswith(bench_replay.TEXT_PREFIX)
    assert frames[-1].startswith(bench_replay.COMPLETE_PREFIX)


def test_repeats_alternate_which_parley_runs_first() -> None:
    servers = ("floor", "baseline", "parley")
    assert run_order(servers, 0) == ("floor", "baseline", "parley")
    assert run_order(servers, 1) == ("floor", "parley", "baseline")
    assert run_order(servers, 2) == servers
    assert run_order(("parley",), 1) == ("parley",)


def test_instruction_counts_read_callgrinds_totals_and_divide_by_the_deltas(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.out"
    out.write_text("version: 1\nevents: Ir\nsummary: 0\nfl=(1) x.c\nfn=(1) f\n3 7\n\ntotals: 1234567\n")
    assert totals(out) == 1234567
    (tmp_path / "empty.out").write_text("events: Ir\n")
    with pytest.raises(ValueError, match="no totals"):
        totals(tmp_path / "empty.out")
    counts = [
        Count("baseline", "0a9d2ec", 1, 20, 2000, 40_000 * 20 * 2000),
        Count("parley", "working tree", 1, 20, 2000, 44_000 * 20 * 2000),
    ]
    assert counts[1].per_delta == 44_000
    assert table(counts)[-1] == "| 1 | 20 turns × 2,000 deltas | 40,000 | 44,000 | 1.100× |"
