"""The `scaleout` scenario (Redis and several processes) and the PostgreSQL ÷ SQLite row of `sweep-postgres`:
the plan, the deployment the harness starts, where the generator connects, the remote cancel and resume
driver, the verdicts and the report section.

No server starts here: the harness is stopped where it would start a process, and the driver is fed frames
by hand.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from bench.drivers import Recorder, TurnLoad, Window
from bench.harness import Context, Live, RunRecord, database_of, deployment_spec, start_deployment
from bench.loadgen import Spec
from bench.remote import RemoteDriver
from bench.report import render
from bench.results import Results
from bench.run import describe_plan, summary_line
from bench.scenarios import SCENARIOS, build
from bench.servers import Deployment, ParleySource, RedisServer, Server
from bench.targets import postgres_ttft_targets, scaleout_targets, verdicts
from tests.test_bench_resume import FakeClient

# -- the plan ----------------------------------------------------------------------------------------------


def test_the_scaleout_scenario_runs_each_case_on_its_servers_on_postgresql() -> None:
    assert "scaleout" in SCENARIOS
    full = build("scaleout", quick=False)
    assert full.database == "postgres" and not full.profiled
    servers = [full.servers_for(c) for c in full.cases]
    assert servers == [("parley", "redis")] * 2 + [("redis", "cluster"), ("cluster",), ("cluster",)]
    assert [c.level for c in full.cases] == [1, 100, 200, 100, 100]
    assert [c.repeats for c in full.cases] == [5, 5, 3, 1, 1]
    assert full.cases[2].load["spread"] is True
    assert [c.load.get("remote_action") for c in full.cases[3:]] == ["cancel", "resume"]
    assert full.cases[3].load["cancel_fraction"] == full.cases[4].load["remote_fraction"] == 0.1

    quick = build("scaleout", quick=True)
    assert all(c.repeats == 1 and c.load["measure_s"] <= 3.0 for c in quick.cases)
    plan = describe_plan([quick])["scaleout"]["cases"]
    assert [c["servers"] for c in plan][-1] == ["cluster"]


def test_sweep_postgres_runs_parley_on_sqlite_beside_it() -> None:
    scenario = build("sweep-postgres", quick=True)
    assert scenario.servers == ("sqlite", "parley")
    assert [database_of(kind, scenario) for kind in (*scenario.servers, "floor")] == [
        "sqlite",
        "postgres",
        "none",
    ]
    assert database_of("cluster", build("scaleout", True)) == "postgres"


# -- the deployment ----------------------------------------------------------------------------------------


def context(tmp_path: Path) -> Context:
    return Context({0}, {1}, tmp_path, Live(1, io.StringIO()), ParleySource(None, "working tree"))


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def fake_server(kind: str, pid: int, port: int, secret: str = "s") -> Server:
    return Server("parley", cast(Any, FakeProc(pid)), port, Path("log"), Path("."), secret, kind)


async def test_a_cluster_is_its_redis_then_processes_on_cores_of_their_own_with_one_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[dict[str, Any]] = []

    def fake_start_parley(*args: Any, **kwargs: Any) -> Server:
        asked.append({"cores": args[0], "database": args[2], "env": dict(args[-1]), **kwargs})
        return fake_server(args[2], 100 + len(asked), 8000 + len(asked), kwargs["secret"] or "first")

    redis = RedisServer(cast(Any, FakeProc(99)), 6390, tmp_path / "redis.log")
    monkeypatch.setattr("bench.harness.start_parley", fake_start_parley)
    monkeypatch.setattr("bench.harness.start_redis", lambda cores, scratch: redis)
    ctx = context(tmp_path)
    scenario = build("scaleout", True)

    cluster = await start_deployment("cluster", scenario, ctx, "postgresql://x/db")
    assert cluster.redis is redis and [s.pid for s in cluster.servers] == [101, 102]
    assert [a["cores"] for a in asked] == [{0}, {1}]
    assert [a["secret"] for a in asked] == [None, "first"]
    assert all(a["env"]["PARLEY_REDIS_URL"] == "redis://127.0.0.1:6390/0" for a in asked)

    asked.clear()
    single = await start_deployment("redis", scenario, ctx, "postgresql://x/db")
    assert len(single.servers) == 1 and [a["cores"] for a in asked] == [{0}]
    asked.clear()
    plain = await start_deployment("parley", scenario, ctx, "postgresql://x/db")
    assert plain.redis is None and "PARLEY_REDIS_URL" not in asked[0]["env"]


def test_the_generator_spreads_over_the_processes_or_sends_its_remote_frames_to_the_last() -> None:
    a, b = fake_server("postgres", 11, 9001), fake_server("postgres", 12, 9002)
    redis = RedisServer(cast(Any, FakeProc(13)), 6390, Path("r.log"))
    deployment = Deployment([a, b], redis)
    spread = deployment_spec(deployment, {"spread": True})
    assert spread["urls"] == [a.ws_url, b.ws_url] and spread["url"] == a.ws_url
    assert (spread["server_pid"], spread["peer_pids"], spread["redis_pid"]) == (11, [12], 13)
    remote = deployment_spec(deployment, {"remote_action": "cancel"})
    assert remote["remote_url"] == b.ws_url and "urls" not in remote

    spec = Spec(
        mode="stream",
        url="ws://a",
        tokens=["t0", "t1", "t2"],
        server_pid=1,
        connections=4,
        urls=["ws://a", "ws://b"],
    )
    assert [spec.url_for(i) for i in range(4)] == [
        "ws://a?token=t0",
        "ws://b?token=t1",
        "ws://a?token=t2",
        "ws://b?token=t0",
    ]
    assert spec.url_for(1, "ws://c") == "ws://c?token=t1"  # the twin: same customer, elsewhere


# -- the remote driver -------------------------------------------------------------------------------------


def events(rid: str, deltas: int, status: str = "completed") -> list[bytes]:
    frames = [{"type": "working", "request_id": rid, "seq": 0}]
    frames += [{"type": "text", "request_id": rid, "seq": n + 1, "content": "x" * 8} for n in range(deltas)]
    frames += [{"type": "fullProcessComplete", "request_id": rid, "seq": deltas + 1, "status": status}]
    return [orjson.dumps(f) for f in frames]


def driver(action: str, fraction: float, cancel: float = 0.0) -> tuple[RemoteDriver, FakeClient, FakeClient]:
    client, remote = FakeClient(), FakeClient()
    rec = Recorder(Window(start=0.0, end=100.0))
    load = TurnLoad(10, 8, cancel_fraction=cancel, max_turns=1)
    made = RemoteDriver(
        cast(Any, client),
        cast(Any, remote),
        action,
        fraction,
        load,
        rec,
        random.Random(1),
        client.loop.create_future(),
    )
    return made, client, remote


async def test_a_remote_cancel_goes_out_on_the_other_connection() -> None:
    made, client, remote = driver("cancel", 0.0, cancel=1.0)
    made.start()
    rid = orjson.loads(client.sent[-1])["request_id"]
    for at, frame in enumerate(events(rid, 9)):
        client.sink(frame, float(at))
        if remote.sent:
            break
    assert len(client.sent) == 1  # the chat request only
    assert orjson.loads(remote.sent[-1]) == {"type": "cancel", "request_id": rid}


async def test_a_remote_resume_replays_the_turn_on_the_other_connection_whole() -> None:
    made, client, remote = driver("resume", 1.0)
    made.start()
    rid = orjson.loads(client.sent[-1])["request_id"]
    frames = events(rid, 10)
    for at, frame in enumerate(frames):
        client.sink(frame, 1.0 + at)
    assert orjson.loads(remote.sent[-1]) == {"type": "resume", "request_id": rid, "after_seq": -1}
    (replay,) = made.replays
    assert 1 <= replay.head <= 9
    for at, frame in enumerate(frames):
        remote.sink(frame, 20.0 + at)
    assert replay.done.done() and made.whole(replay)
    assert made.lag_ms(replay) == pytest.approx((31.0 - 12.0) * 1000)


async def test_a_frame_on_a_connection_that_follows_nothing_is_an_error() -> None:
    made, _, remote = driver("cancel", 0.0)
    remote.sink(b'{"type":"error","content":"down","stage":"x","code":"cluster_unavailable"}', 1.0)
    assert made.rec.errors == {"remote error cluster_unavailable": 1}


# -- the verdicts and the report ---------------------------------------------------------------------------


def stream(**fields: Any) -> dict[str, Any]:
    return {"mode": "stream", "error_total": 0, "gen_cpu_pct": 40.0, "server_cpu_pct": 95.0, **fields}


def record(label: str, level: int, server: str, load: dict[str, Any], repeat: int = 0) -> RunRecord:
    made = RunRecord("scaleout", label, level, server, "postgres", load=load)
    made.repeat = repeat
    return made


def scaleout_records() -> list[RunRecord]:
    runs = []
    for repeat, (without, with_redis) in enumerate([(13.0, 15.0), (12.0, 16.0)]):
        runs += [
            record("1 stream", 1, "parley", stream(server_cpu_per_delta_us=without), repeat),
            record("1 stream", 1, "redis", stream(server_cpu_per_delta_us=with_redis), repeat),
        ]
    runs += [
        record("100 streams", 100, "parley", stream(server_cpu_per_delta_us=15.0)),
        record("100 streams", 100, "redis", stream(server_cpu_per_delta_us=16.5, redis_cpu_per_delta_us=2.0)),
        record("200 streams", 200, "redis", stream(deltas_per_s=50_000.0, spec={"spread": True})),
        record(
            "200 streams",
            200,
            "cluster",
            stream(
                deltas_per_s=70_000.0,
                server_cpu_pct=140.0,
                gen_cpu_pct=95.0,
                server_cpu_each_pct=[90.0, 50.0],
                spec={"spread": True},
            ),
        ),
        record(
            "100 streams, cancels",
            100,
            "cluster",
            stream(
                cancel={"latency_ms": {"p50": 4.0, "p99": 25.0}, "measured": 50, "after_cancelled": 0},
                spec={"remote_action": "cancel", "connections": 100},
            ),
        ),
        record(
            "100 streams, resumes",
            100,
            "cluster",
            stream(
                remote_resume={"first_ms": {"p50": 8.0, "p99": 30.0}, "resumes": 40, "identical": 40},
                spec={"remote_action": "resume", "connections": 100},
            ),
        ),
    ]
    return runs


def test_the_scaleout_verdicts() -> None:
    found = {
        v.target.split(" (")[0].split(", ")[-1]: v for v in scaleout_targets(Results(scaleout_records()))
    }
    cpu_one = next(v for v in found.values() if "single stream" in v.target)
    assert cpu_one.met is False and cpu_one.measured.startswith(
        "1.250× (best of 2 runs each: 15.0 µs with vs 12.0"
    )
    cpu_many = next(v for v in found.values() if "100 unpaced streams" in v.target)
    assert cpu_many.met is True and cpu_many.measured.startswith("1.100×")
    scale = next(v for v in found.values() if "2 processes" in v.target)
    assert scale.met is False and scale.measured.startswith("1.400× (70,000/s 2 processes vs 50,000/s 1)")
    assert "**the cores were saturated**" in scale.measured
    cancel = next(v for v in found.values() if "cancel → `cancelled`" in v.target)
    assert (cancel.met, cancel.measured) == (False, "25.0 ms (p50 4.00 ms, 50 cancels)")
    resume = next(v for v in found.values() if "first replayed event" in v.target)
    assert (resume.met, resume.measured) == (True, "8.00 ms (p99 30.0 ms, 40 resumes)")
    assert all(v.met is None for v in scaleout_targets(Results([record("x", 1, "redis", stream())])))
    assert scaleout_targets(Results([])) == []


def test_postgresql_first_text_is_judged_against_sqlite_of_the_same_run() -> None:
    def run(server: str, p50: float) -> RunRecord:
        return RunRecord(
            "sweep-postgres",
            "100 streams",
            100,
            server,
            "x",
            load=stream(ttft_ms={"p50": p50, "p99": 2 * p50}),
        )

    (verdict,) = postgres_ttft_targets(Results([run("sqlite", 14.0), run("parley", 42.0)]))
    assert (verdict.met, verdict.measured) == (False, "3.00× (42.0 ms vs 14.0 ms p50; p99 3.00×)")
    assert verdict.gap == "by 1.00× (50% over)"
    sweep = RunRecord("sweep", "100 streams", 100, "parley", "sqlite", load=stream(ttft_ms={"p50": 30.0}))
    (fallback,) = postgres_ttft_targets(Results([sweep, run("parley", 42.0)]))
    assert fallback.met is True
    assert verdict.target in [v.target for v in verdicts(Results([run("sqlite", 14.0), run("parley", 42.0)]))]


def test_the_report_has_the_scaleout_section() -> None:
    meta = {"quick": False, "parley_env": {}, "scenarios": describe_plan([build("scaleout", False)])}
    report = render(scaleout_records(), {}, meta, [])
    section = report.split("## Scale-out: Redis and several processes", 1)[1].split("\n## ", 1)[0]
    assert "| 1 stream: best of each | Parley + Redis ÷ Parley |  |  | 1.250× |" in section
    assert "| 1 | 2 | 70,000/s | 140% (90% + 50%) |" in section
    assert "**The load generator shares this machine's two cores**" in section
    assert "| 50 | 4.00 ms / 25.0 ms / – |" in section
    assert "| 40 | 8.00 ms / 30.0 ms / – |" in section
    assert "resume first p50 8.00 ms (40)" in summary_line(scaleout_records()[-1])
