"""Real servers for tests: uvicorn on a free loopback port in the test's own loop, SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import httpx2
import pytest

from parley.app import create_app
from parley.auth import mint_token
from parley.config import Settings
from parley.server import ParleyServer
from parley.services import Runtime
from parley.store.repository import Store
from tests.providers.fake_anthropic import FakeAnthropic
from tests.providers.fake_openai import FakeOpenAI
from tests.wsclient import ChatClient

SECRET = "test-secret-" + "x" * 40
PG_ADMIN_DSN = os.environ.get("PARLEY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(what: str, why: object) -> None:
    """Skip with the reason; under CI=true a missing service fails instead."""
    message = f"{what} is not reachable ({why}); start it or run without it"
    if IN_CI:
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped at the end."""
    name = f"parley_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _unavailable(f"PostgreSQL at {PG_ADMIN_DSN}", exc)
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(autouse=True)
def forget_fastapi_callables() -> Iterator[None]:
    """After each test, empty FastAPI's module-level caches of endpoint and dependency callables.

    ``fastapi.dependencies.models`` classifies callables through ``lru_cache``s of 4096 entries each, keyed
    by the callable itself; Parley's endpoints are closures over their app, so each app a test built (and
    with it its runtime, routes and pydantic validators) stayed alive until pushed out: about a thousand
    apps, near 1 GB, by the end of the suite. Every full garbage collection then walked ~4 million objects,
    and the interpreter took 15-20 s to exit after pytest's summary. Emptying the caches only makes FastAPI
    classify an app's callables again; it looks the caches up by attribute, so a FastAPI without them is
    left alone.
    """
    yield
    from fastapi.dependencies import models

    for value in list(vars(models).values()):
        clear = getattr(value, "cache_clear", None)
        if callable(clear):
            clear()


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
PROVIDER_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


@pytest.fixture(autouse=True)
def no_real_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach a real model API: keys in the environment are hidden, and any HTTP request to a
    host other than loopback fails the test — through httpx and httpx2 (the vendor SDKs' transport)."""
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    for transport in (httpx.AsyncHTTPTransport, httpx2.AsyncHTTPTransport):
        monkeypatch.setattr(transport, "handle_async_request", _loopback_only(transport.handle_async_request))


def _loopback_only(send: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def guarded(self: Any, request: Any) -> Any:
        if request.url.host not in LOOPBACK:
            pytest.fail(f"a test tried to reach {request.url.host}: tests talk only to local fake servers")
        return await send(self, request)

    return guarded


@dataclass
class LiveServer:
    """A running Parley: its URLs, a token minter and the runtime (store) behind it."""

    server: ParleyServer
    settings: Settings

    @property
    def port(self) -> int:
        return self.server.bound_port

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/chat/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.server.app.state.runtime
        return runtime

    @property
    def store(self) -> Store:
        return self.runtime.store

    def token(self, customer_id: str | int = 1, ttl_s: int = 3600) -> str:
        return mint_token(SECRET, str(customer_id), ttl_s)

    async def client(self, customer_id: str | int = 1, dialect: str | None = None) -> ChatClient:
        return await ChatClient.open(self.ws_url, self.token(customer_id), dialect)

    def http(self, customer_id: str | int | None = 1) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.token(customer_id)}"} if customer_id is not None else {}
        return httpx.AsyncClient(base_url=self.http_url, headers=headers, timeout=10)


def make_settings(tmp_path: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": database_url,
        "jwt_secret": SECRET,
        "host": "127.0.0.1",
        "port": 0,
        "log_level": "warning",
        "shutdown_grace_s": 5,
        **overrides,
    }
    return Settings.model_validate(values)


@asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """Start Parley in this loop; stop it (graceful shutdown, turns drained) on exit."""
    server = ParleyServer(create_app(settings), settings)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during startup")
            await asyncio.sleep(0.01)
    try:
        yield LiveServer(server, settings)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str | None:
    if backend == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return None  # the default: a SQLite file in the data directory


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for a test that builds its own store: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def server(tmp_path: Path, database_url: str | None) -> AsyncIterator[LiveServer]:
    """Parley on SQLite and on PostgreSQL (the test runs once for each)."""
    async with live_server(make_settings(tmp_path, database_url)) as live:
        yield live


@pytest.fixture
async def sqlite_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """Parley on SQLite only, for behaviour that does not depend on the database."""
    async with live_server(make_settings(tmp_path)) as live:
        yield live


# -- real providers' SDKs against local fakes of their APIs -------------------------------------------

OPENAI_TEST_KEY = "sk-openai-test-key-never-shown"
ANTHROPIC_TEST_KEY = "sk-ant-test-key-never-shown"


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


def use_fake(monkeypatch: pytest.MonkeyPatch, fake: FakeOpenAI | FakeAnthropic) -> None:
    """Configure the built-in provider the fake stands for through the variables its SDK documents."""
    if isinstance(fake, FakeOpenAI):
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_TEST_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    else:
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_TEST_KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)


@pytest.fixture
async def gpt_server(
    fake_openai: FakeOpenAI, tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LiveServer]:
    """Parley on SQLite and PostgreSQL, not in dev mode, its OpenAI provider pointed at the fake."""
    use_fake(monkeypatch, fake_openai)
    async with live_server(make_settings(tmp_path, database_url, provider_retry_backoff_s=0.01)) as live:
        yield live


@pytest.fixture
async def claude_server(
    fake_anthropic: FakeAnthropic, tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LiveServer]:
    """Parley on SQLite and PostgreSQL, not in dev mode, its Anthropic provider pointed at the fake."""
    use_fake(monkeypatch, fake_anthropic)
    async with live_server(make_settings(tmp_path, database_url, provider_retry_backoff_s=0.01)) as live:
        yield live
