"""``GET /metrics`` (parley/metrics.py): scraped with prometheus-client's own text parser during and after
real turns (completed, cancelled, failed at the provider, refused, resumed), with ``PARLEY_METRICS=false``,
and under ``parley serve --workers 2``, where any worker's answer must be the sum of all of them.

The single-process tests share the test process's metrics with every other in-process server, so each
compares a scrape after with one before."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from parley.auth import mint_token
from tests.cluster_helpers import Cluster, cluster, redis_url
from tests.conftest import LiveServer, fake_anthropic, live_server, make_settings, use_fake
from tests.invariants import check_turn, kind_of
from tests.metrics_helpers import PLAIN, Scrape, changed, key, scrape
from tests.providers.fake_anthropic import FakeAnthropic
from tests.resume_helpers import SLOW, drop, next_error, resume_frame, resumed, until_seq
from tests.test_cli import SECRET, cli_env, free_port, one_turn, parley_serve, run_cli
from tests.test_cluster_edges import children, cmdline
from tests.test_recovery import poll
from tests.wsclient import ChatClient

__all__ = ["cluster", "fake_anthropic", "redis_url"]  # fixtures


# Every metric the issue names (dashboards use these), with the labels each may carry.
NAMED = {
    "parley_turns_total": {"status", "provider"},
    "parley_turns_active": set(),
    "parley_connections_active": set(),
    "parley_first_text_seconds": {"le"},
    "parley_turn_duration_seconds": {"le"},
    "parley_text_deltas_total": set(),
    "parley_tokens_total": {"kind"},
    "parley_cancel_seconds": {"le"},
    "parley_resumes_total": {"outcome"},
    "parley_provider_errors_total": {"code"},
    "parley_turns_interrupted_total": set(),
    "parley_db_write_seconds": {"le"},
}
HISTOGRAMS = [name for name, labels in NAMED.items() if labels == {"le"}]


# -- one process ---------------------------------------------------------------------------------------


async def test_every_named_metric_is_there_with_its_type_before_any_turn(sqlite_server: LiveServer) -> None:
    now = await scrape(sqlite_server.http_url)
    for name, labels in NAMED.items():
        family = name.removesuffix("_total")
        assert family in now.types, f"{name} is missing from /metrics"
        expected = "counter" if name.endswith("_total") else "histogram" if "le" in labels else "gauge"
        assert now.types[family] == expected, name
    # the words a dashboard filters on are there at 0 before the first turn
    for kind in ("input", "output"):
        assert key("parley_tokens_total", kind=kind) in now.samples
    for outcome in ("replayed", "expired"):
        assert key("parley_resumes_total", outcome=outcome) in now.samples
    for status in ("completed", "cancelled", "error"):
        assert key("parley_turns_total", status=status, provider="demo") in now.samples
    assert "_created" not in now.text


async def test_a_completed_turn_moves_each_of_its_metrics_by_what_the_client_saw(
    sqlite_server: LiveServer,
) -> None:
    url = sqlite_server.http_url
    before = await scrape(url)
    async with await sqlite_server.client("metrics-done") as client:
        opened = await scrape(url)
        assert opened.get("parley_connections_active") - before.get("parley_connections_active") == 1
        turn = check_turn(await client.events(await client.chat("Hello", options={"chunks": 7})))
        assert turn.status == "completed"
        after = await scrape(url)
    texts = sum(1 for kind in turn.kinds if kind == "text")
    assert texts == 7
    assert turn.usage is not None
    moved = after - before
    assert moved[key("parley_turns_total", status="completed", provider="demo")] == 1
    assert moved[key("parley_text_deltas_total")] == texts
    assert moved[key("parley_tokens_total", kind="output")] == turn.usage["output_tokens"]
    assert moved[key("parley_tokens_total", kind="input")] == turn.usage["input_tokens"]
    assert moved[key("parley_first_text_seconds_count")] == 1
    assert moved[key("parley_turn_duration_seconds_count")] == 1
    assert moved[key("parley_db_write_seconds_count")] >= 2  # the question, the answer
    assert moved[key("parley_connections_active")] == 1, "the socket is still open"
    assert key("parley_cancel_seconds_count") not in moved
    assert key("parley_provider_errors_total", code="provider_error") not in moved
    for histogram in ("parley_first_text_seconds", "parley_turn_duration_seconds"):
        assert 0 < moved[key(f"{histogram}_sum")] < 10, histogram
    closed = await poll(
        lambda: scrape(url),
        lambda s: s.get("parley_connections_active") == before.get("parley_connections_active"),
        10,
        "the closed socket no longer counted",
    )
    assert closed.get("parley_turns_active") == before.get("parley_turns_active")


async def test_a_running_turn_is_active_and_its_deltas_count_as_they_go_then_a_cancel_is_timed(
    sqlite_server: LiveServer,
) -> None:
    url = sqlite_server.http_url
    before = await scrape(url)
    async with await sqlite_server.client("metrics-cancel") as client:
        rid = await client.chat("Count", options=SLOW)
        await until_seq(client, rid, 40)
        during = await scrape(url)
        seen = sum(1 for frame in client.turns[rid] if kind_of(frame) == "text")
        moved = during - before
        assert moved[key("parley_turns_active")] == 1
        assert moved[key("parley_connections_active")] == 1
        assert seen <= moved[key("parley_text_deltas_total")] < 300, "counted live, at the scrape"
        assert key("parley_turns_total", status="completed", provider="demo") not in moved

        await client.send({"type": "cancel", "request_id": rid})
        turn = check_turn(await client.events(rid))
        after = await scrape(url)
    assert turn.status == "cancelled"
    moved = after - before
    assert moved[key("parley_turns_total", status="cancelled", provider="demo")] == 1
    assert moved[key("parley_cancel_seconds_count")] == 1
    assert 0 <= moved.get(key("parley_cancel_seconds_sum"), 0.0) < 5
    assert key("parley_turns_active") not in moved, "the cancelled turn is no longer running"
    texts = sum(1 for kind in turn.kinds if kind == "text")
    assert moved[key("parley_text_deltas_total")] == texts, "nothing counted past the cut"


async def test_a_cancel_before_the_answer_streams_is_timed_too_and_a_server_stop_is_not(
    tmp_path: Path,
) -> None:
    async with live_server(make_settings(tmp_path, max_turn_s=1.0)) as server:
        url = server.http_url
        before = await scrape(url)
        async with await server.client("metrics-early") as client:
            first = await client.chat("Long", options={"chunks": 400, "delay_ms": 20})  # stopped at 1 s
            queued = await client.chat("Waits behind the first")
            await client.send({"type": "cancel", "request_id": queued})
            stopped = check_turn(await client.events(first))
            early = check_turn(await client.events(queued))
        after = await scrape(url)
    assert (stopped.status, stopped.only("cancelled").get("code")) == ("cancelled", "turn_too_long")
    assert early.status == "cancelled"
    moved = after - before
    assert moved[key("parley_turns_total", status="cancelled", provider="demo")] == 2
    assert moved[key("parley_cancel_seconds_count")] == 1, "the client's cancel only, not the server's stop"


async def test_a_provider_error_and_a_refused_request_are_counted_apart(sqlite_server: LiveServer) -> None:
    url = sqlite_server.http_url
    before = await scrape(url)
    async with await sqlite_server.client("metrics-fail") as client:
        failed = check_turn(await client.events(await client.chat("Fail", options={"fail_after": 3})))
        refused = check_turn(await client.events(await client.chat("Hi", model="no-such-model")))
    after = await scrape(url)
    assert failed.status == refused.status == "error"
    assert failed.error is not None and failed.error["code"] == "provider_error"
    assert refused.error is not None and refused.error["code"] == "unknown_model"
    errors = changed(after, before, "parley_provider_errors_total")
    assert errors == {key("parley_provider_errors_total", code="provider_error"): 1}, "the refusal is not one"
    moved = after - before
    assert moved[key("parley_turns_total", status="error", provider="demo")] == 1
    assert moved[key("parley_turns_total", status="error", provider="none")] == 1, "no provider resolved"
    assert moved[key("parley_turn_duration_seconds_count")] == 2
    assert moved[key("parley_first_text_seconds_count")] == 1, "the failed turn sent 3 deltas first"
    assert moved[key("parley_text_deltas_total")] == 3


@pytest.fixture
async def claude_server(
    fake_anthropic: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LiveServer]:
    """Parley on SQLite, its Anthropic provider (the real SDK) pointed at a local fake of the API."""
    use_fake(monkeypatch, fake_anthropic)
    async with live_server(make_settings(tmp_path, provider_retry_backoff_s=0.01)) as live:
        yield live


async def test_a_real_sdks_failures_count_by_code_and_its_usage_as_tokens(
    claude_server: LiveServer, fake_anthropic: FakeAnthropic
) -> None:
    url = claude_server.http_url
    failures = [
        (429, "rate_limit_error", "Number of requests exceeded", "rate_limited"),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 250000 tokens > 200000 maximum",
            "context_too_long",
        ),
        (401, "authentication_error", "invalid x-api-key", "provider_error"),
    ]
    before = await scrape(url)
    async with await claude_server.client("metrics-sdk") as client:
        for status, error_type, message, code in failures:
            fake_anthropic.fail(status, error_type, message)
            failed = await client.turn(await client.chat("Hi", model="claude-sonnet-5-5"))
            assert failed.error is not None and failed.error["code"] == code
        fake_anthropic.script(text_chunks=["Hello", " there"], usage=(21, 7))
        done = await client.turn(await client.chat("Hi", model="claude-sonnet-5-5"))
    after = await scrape(url)
    assert done.status == "completed"
    moved = after - before
    for _, _, _, code in failures:
        assert moved[key("parley_provider_errors_total", code=code)] == 1, code
    assert moved[key("parley_turns_total", status="error", provider="anthropic")] == 3
    assert moved[key("parley_turns_total", status="completed", provider="anthropic")] == 1
    assert moved[key("parley_tokens_total", kind="input")] == 21
    assert moved[key("parley_tokens_total", kind="output")] == 7


async def test_resumes_are_counted_as_replayed_or_expired(sqlite_server: LiveServer) -> None:
    url = sqlite_server.http_url
    who = "metrics-resume"
    before = await scrape(url)
    first = await sqlite_server.client(who)
    rid = await first.chat("Count", options=SLOW)
    await until_seq(first, rid, 20)
    await drop(first, "abort")
    async with await sqlite_server.client(who) as second:
        frames = await resumed(second, rid, 20)
        assert frames[0]["seq"] == 21
        await second.send(resume_frame(f"never-{uuid.uuid4().hex}", 0))
        assert (await next_error(second))["code"] == "stream_expired"
        again = await resumed(second, rid, 290)  # after the end: replayed from the kept log
        assert again[0]["seq"] == 291
    after = await scrape(url)
    moved = changed(after, before, "parley_resumes_total")
    assert moved == {
        key("parley_resumes_total", outcome="replayed"): 2,
        key("parley_resumes_total", outcome="expired"): 1,
    }


async def test_no_label_ever_holds_a_customer_session_or_request_id(sqlite_server: LiveServer) -> None:
    customer = f"cust-{uuid.uuid4().hex}"
    request_id = f"req-{uuid.uuid4().hex}"
    async with await sqlite_server.client(customer) as client:
        done = check_turn(await client.events(await client.chat("Hi", request_id=request_id)))
        await client.send(resume_frame(f"gone-{uuid.uuid4().hex}", 0))
        await next_error(client)
        now = await scrape(sqlite_server.http_url)
    assert done.session_id is not None
    for secret in (customer, request_id, done.session_id, "gone-"):
        assert secret not in now.text
    for (name, labels), _ in now.parley().items():
        family = next((n for n in NAMED if name.startswith(n.removesuffix("_total"))), None)
        assert family is not None, f"{name}: not a metric this test knows; check its labels, then add it"
        assert {label for label, _ in labels} <= NAMED[family], (name, labels)


async def test_a_scraper_that_asks_for_openmetrics_gets_it_and_gzip_when_it_accepts_it(
    sqlite_server: LiveServer,
) -> None:
    openmetrics = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    async with httpx.AsyncClient(base_url=sqlite_server.http_url, timeout=10) as http:
        asked = await http.get("/metrics", headers={"Accept": openmetrics, "Accept-Encoding": "gzip"})
        plain = await http.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert asked.status_code == plain.status_code == 200
    assert asked.headers["content-type"].startswith("application/openmetrics-text")
    assert asked.headers["content-encoding"] == "gzip"  # httpx unzipped .text
    assert asked.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(asked.text)}  # type: ignore[no-untyped-call]
    assert families["parley_turns"].type == "counter"
    assert families["parley_first_text_seconds"].type == "histogram"
    assert "content-encoding" not in plain.headers
    assert plain.headers["content-type"].startswith(PLAIN)
    assert "parley_turns_total" in plain.text


async def test_metrics_off_answers_404_and_turns_still_run(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path, metrics=False)) as server:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
            response = await http.get("/metrics")
            assert response.status_code == 404
            assert response.json()["code"] == "not_found"
            openapi = (await http.get("/openapi.json")).json()
        assert "/metrics" not in openapi["paths"]
        async with await server.client() as client:
            assert check_turn(await client.events(await client.chat("Hi"))).status == "completed"


async def test_one_process_given_a_multiprocess_directory_counts_there_from_zero(tmp_path: Path) -> None:
    """An operator's ``PROMETHEUS_MULTIPROC_DIR`` (a gunicorn habit) is honoured by a lone process too, and an
    earlier run's files in it are not summed into this run's counts."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    env = cli_env(tmp_path / "data", PARLEY_JWT_SECRET=SECRET, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    async with parley_serve(earlier, env) as first:
        assert (await one_turn(first.ws_url, first_token(), "demo")).status == "completed"
    assert list(metrics_dir.glob("counter_*.db")), "the first run counted in the directory"
    later = tmp_path / "later"
    later.mkdir()
    async with parley_serve(later, env) as second:
        assert (await scrape(second.http_url)).get(
            "parley_turns_total", status="completed", provider="demo"
        ) == 0
        await one_turn(second.ws_url, first_token(), "demo")
        now = await scrape(second.http_url)
        assert now.get("parley_turns_total", status="completed", provider="demo") == 1
        assert now.get("parley_connections_active") == 0


def first_token() -> str:
    return mint_token(SECRET, "metrics-dir", 600)


def test_an_unusable_multiprocess_directory_is_a_configuration_mistake(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = cli_env(tmp_path / "data", PARLEY_JWT_SECRET=SECRET, PROMETHEUS_MULTIPROC_DIR=str(blocker / "m"))
    result = run_cli(["serve", "--port", str(free_port())], env, tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("parley: PROMETHEUS_MULTIPROC_DIR: "), line


# -- parley serve --workers 2 -------------------------------------------------------------------------


def per_worker(metrics_dir: Path, name: str, pattern: str) -> dict[int, float]:
    """Each worker's own value of ``name`` (all its labels added), read from its files in the directory."""
    found: dict[int, float] = {}
    for path in metrics_dir.glob(pattern):
        pid = int(path.stem.rsplit("_", 1)[1])
        for metric in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            for sample in metric.samples:
                if sample.name == name:
                    found[pid] = found.get(pid, 0.0) + sample.value
    return found


def workers_of(parent: int) -> list[int]:
    return [pid for pid in children(parent) if "spawn_main" in cmdline(pid)]


async def clients_on_both(
    cluster: Cluster, ws_url: str, metrics_dir: Path, workers: list[int]
) -> list[ChatClient]:
    """Connections held by each worker. The kernel hands a connection to whichever worker accepts first,
    which can be the same one every time; a worker that already holds some is paused (SIGSTOP) while the
    next ones are opened, so that the other must take them."""
    clients = [await cluster.client(ws_url, "metrics-workers") for _ in range(3)]
    for _ in range(len(workers)):
        held = per_worker(metrics_dir, "parley_connections_active", "gauge_livesum_*.db")
        busy = [pid for pid in workers if held.get(pid, 0) > 0]
        if len(busy) == len(workers):
            return clients
        for pid in busy:
            os.kill(pid, signal.SIGSTOP)
        try:
            clients += [await cluster.client(ws_url, "metrics-workers") for _ in range(3)]
        finally:
            for pid in busy:
                os.kill(pid, signal.SIGCONT)
    held = per_worker(metrics_dir, "parley_connections_active", "gauge_livesum_*.db")
    assert all(held.get(pid, 0) > 0 for pid in workers), f"connections per worker: {held}"
    return clients


async def test_with_two_workers_every_scrape_is_the_sum_and_a_dead_workers_counts_stay(
    cluster: Cluster, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # an earlier run's: emptied at the start
    server = cluster.launch(
        "workers", "--workers", "2", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), PARLEY_LOG_LEVEL="info"
    )
    await server.wait_healthy()
    workers = await poll(
        lambda: asyncio.to_thread(workers_of, server.proc.pid),
        lambda pids: len(pids) == 2 and all(list(metrics_dir.glob(f"counter_{p}.db")) for p in pids),
        30,
        "two workers, each with its metrics files",
    )
    assert not (metrics_dir / "counter_999999.db").exists()
    clients = await clients_on_both(cluster, server.ws_url, metrics_dir, workers)
    try:
        rids = [await c.chat("Hi", options={"chunks": 5}) for c in clients]
        for client, rid in zip(clients, rids, strict=True):
            assert check_turn(await client.events(rid)).status == "completed"
        turns = per_worker(metrics_dir, "parley_turns_total", "counter_*.db")
        assert sorted(turns) == sorted(workers) and all(turns.values()), f"both workers ran turns: {turns}"

        for _ in range(8):  # new connections: both workers answer some of these
            now = await poll(
                lambda: scrape(server.http_url),
                lambda s: s.get("parley_text_deltas_total") == 5 * len(clients),
                5,
                "every worker's deltas flushed",
            )
            assert now.get("parley_turns_total", status="completed", provider="demo") == len(clients)
            assert now.get("parley_connections_active") == len(clients)
            assert now.count("parley_turn_duration_seconds") == len(clients)
            assert now.count("parley_first_text_seconds") == len(clients)
            assert now.get("parley_turns_active") == 0

        victim = workers[0]
        held = per_worker(metrics_dir, "parley_connections_active", "gauge_livesum_*.db")[victim]
        os.kill(victim, signal.SIGKILL)  # the parent starts another; the dead one's sockets are gone
        await poll(
            lambda: asyncio.to_thread(workers_of, server.proc.pid),
            lambda pids: len(pids) == 2 and victim not in pids,
            30,
            "the dead worker replaced",
        )
        await poll(
            lambda: asyncio.to_thread(lambda: server.stderr.count("Application startup complete")),
            lambda started: started == 3,
            30,
            "the new worker serving",
        )
        after = await poll(
            lambda: scrape(server.http_url),
            lambda s: s.get("parley_connections_active") == len(clients) - held,
            15,
            "the dead worker's connections no longer counted",
        )
        assert after.get("parley_turns_total", status="completed", provider="demo") == len(clients)
        assert after.get("parley_text_deltas_total") == 5 * len(clients), "a dead worker's counts stay"
    finally:
        for client in clients:
            await asyncio.wait_for(client.close(), 5)
    assert await cluster.terminate(server) == 0, server.describe()


def test_each_histogram_has_buckets_up_to_inf_and_a_sum() -> None:
    from parley import metrics

    body, content_type = metrics.Metrics().exposition()
    assert content_type.startswith(PLAIN)
    now = Scrape(body.decode())
    for histogram in HISTOGRAMS:
        assert key(f"{histogram}_bucket", le="+Inf") in now.samples, histogram
        assert key(f"{histogram}_sum") in now.samples, histogram
