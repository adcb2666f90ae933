"""Prometheus metrics, served at ``GET /metrics`` (parley/api/metrics.py); ``PARLEY_METRICS=false`` turns
them off.

The names are a contract (dashboards and alerts outside this repository use them): never rename one. No
label ever holds a customer, session or request id: ``status`` is a turn's end (completed, cancelled,
error), ``provider`` a configured provider's name, ``code`` a stable error code, ``kind`` and ``outcome``
the words listed below.

Nothing is recorded per token but one integer: text deltas are counted in ``parley.protocol.DELTAS`` (an
attribute increment on the hot path) and moved into ``parley_text_deltas_total`` once a second and at
every scrape (``Metrics.flush``). Everything else is recorded once per turn, connection, resume or
database write.

Under ``parley serve --workers N`` each worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(the ``prometheus-client`` package's multiprocess mode; parley/workers.py sets it up) and a scrape of any
worker adds up all of them: counters and histograms summed over every worker that ever ran, the two gauges
over the workers alive.
"""

from __future__ import annotations

import asyncio
import os
import time

import prometheus_client
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

from parley.protocol import DELTAS

__all__ = ["DELTAS", "MULTIPROC_ENV", "OFF", "Metrics"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_INTERVAL_S = 1.0
TURN_STATUSES = ("completed", "cancelled", "error")
NO_PROVIDER = "none"  # a turn whose model named no configured provider

# No ``*_created`` series: they would double every counter's and histogram's output.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

TURNS = Counter(
    "parley_turns_total",
    "Chat turns ended, by how they ended (completed, cancelled, error) and the provider that served them.",
    ["status", "provider"],
)
TURNS_ACTIVE = Gauge(
    "parley_turns_active",
    "Chat turns running now (not those waiting behind another).",
    multiprocess_mode="livesum",
)
CONNECTIONS_ACTIVE = Gauge(
    "parley_connections_active", "WebSocket connections open now.", multiprocess_mode="livesum"
)
FIRST_TEXT = Histogram(
    "parley_first_text_seconds",
    "From a chat request's arrival to its answer's first text event.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
TURN_DURATION = Histogram(
    "parley_turn_duration_seconds",
    "From a chat request's arrival to its fullProcessComplete, whatever the end.",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)
TEXT_DELTAS = Counter("parley_text_deltas_total", "Text events sent with answers (after coalescing).")
TOKENS = Counter(
    "parley_tokens_total", "Tokens the providers reported for ended turns: input or output.", ["kind"]
)
CANCEL = Histogram(
    "parley_cancel_seconds",
    "From a client's cancel reaching its turn to the turn's cancelled event.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RESUMES = Counter(
    "parley_resumes_total",
    "resume frames answered: replayed (the events after after_seq were sent) or expired (stream_expired).",
    ["outcome"],
)
INTERRUPTED = Counter(
    "parley_turns_interrupted_total",
    "Answers a stopped server process left streaming, closed as interrupted by this one (from their logs "
    "over Redis, or by the database sweep); the stopped process never counted them as ended.",
)
PROVIDER_ERRORS = Counter(
    "parley_provider_errors_total", "Turns that ended with a provider's error, by its code.", ["code"]
)
DB_WRITE = Histogram(
    "parley_db_write_seconds",
    "A turn's database writes (question, checkpoint, answer, tool steps), queueing included.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)

for _kind in ("input", "output"):
    TOKENS.labels(_kind)
for _outcome in ("replayed", "expired"):
    RESUMES.labels(_outcome)


class Metrics:
    """What a server records; every method is a no-op when ``enabled`` is False (``PARLEY_METRICS``)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def providers(self, names: list[str]) -> None:
        """Show every configured provider's turn counts from the start, at 0."""
        if self.enabled:
            for name in names:
                for status in TURN_STATUSES:
                    TURNS.labels(status, name)

    def turn_started(self) -> None:
        if self.enabled:
            TURNS_ACTIVE.inc()

    def turn_ended(self, status: str, provider: str | None, started: float, running: bool) -> None:
        """A turn ended with ``status``; ``started`` is its arrival (``time.perf_counter``), ``running``
        whether ``turn_started`` counted it."""
        if not self.enabled:
            return
        if running:
            TURNS_ACTIVE.dec()
        TURNS.labels(status, provider or NO_PROVIDER).inc()
        TURN_DURATION.observe(time.perf_counter() - started)
        self.flush()

    def first_text(self, started: float) -> None:
        if self.enabled:
            FIRST_TEXT.observe(time.perf_counter() - started)

    def cancelled(self, asked: float) -> None:
        if self.enabled:
            CANCEL.observe(time.perf_counter() - asked)

    def tokens(self, usage: dict[str, int] | None) -> None:
        if self.enabled and usage:
            for kind in ("input", "output"):
                count = usage.get(f"{kind}_tokens")
                if count:
                    TOKENS.labels(kind).inc(count)

    def provider_error(self, code: str) -> None:
        if self.enabled:
            PROVIDER_ERRORS.labels(code).inc()

    def interrupted(self, closed: int) -> None:
        if self.enabled and closed:
            INTERRUPTED.inc(closed)

    def resume(self, outcome: str) -> None:
        if self.enabled:
            RESUMES.labels(outcome).inc()

    def connection_opened(self) -> None:
        if self.enabled:
            CONNECTIONS_ACTIVE.inc()

    def connection_closed(self) -> None:
        if self.enabled:
            CONNECTIONS_ACTIVE.dec()

    def db_write(self, seconds: float) -> None:
        if self.enabled:
            DB_WRITE.observe(seconds)

    def flush(self) -> None:
        """Move the deltas counted since the last flush into ``parley_text_deltas_total``."""
        if not self.enabled:
            return
        sent = DELTAS.sent
        if sent > DELTAS.flushed:
            TEXT_DELTAS.inc(sent - DELTAS.flushed)
            DELTAS.flushed = sent

    async def run_flush(self) -> None:
        """Flush once a second, so a scrape of another worker sees this one's deltas (owned by the app's
        lifespan, which cancels it)."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """What a scrape gets, and its content type: this process's metrics, or every worker's under
        ``--workers``, in the text format or, when ``accept`` asks for it, OpenMetrics."""
        self.flush()
        encode, content_type = choose_encoder(accept)
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            return encode(REGISTRY), content_type
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
        return encode(registry), content_type


OFF = Metrics(enabled=False)
