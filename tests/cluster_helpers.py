"""Several real ``parley serve`` processes as one server: one PostgreSQL database, one Redis, one JWT secret,
and nginx in front of them, round-robin, from the shipped ``deploy/nginx.conf``.

Import the fixtures by name (``from tests.cluster_helpers import cluster, nginx``):

- ``redis_url``: a db of the machine's Redis (1..15) claimed for this test alone, emptied before and after.
- ``private_redis``: a ``redis-server`` of the test's own on a free port, to stop and start mid-test.
- ``cluster`` / ``private_cluster``: spawn ``parley serve`` processes on a fresh database, with the
  ``redis_url`` db or with ``private_redis``.
- ``nginx``: round-robin over the ports it is started with.

Every process is started in its own process group, with its output in files under the test's directory,
and stopped by its pid (or its group) at teardown whatever happens; nothing else on the machine is touched.
Missing PostgreSQL, Redis or nginx skips the test, or fails it under CI=true (``_unavailable``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.databases import create_database, drop_database
from parley.auth import mint_token
from parley.store.db import create_engine, migrate
from tests.conftest import PG_ADMIN_DSN, SECRET, _unavailable
from tests.test_cli import ServeProcess, cli_env, free_port
from tests.test_recovery import kill_group
from tests.wsclient import ChatClient

__all__ = [
    "NGINX_CONF",
    "Cluster",
    "Nginx",
    "RedisServer",
    "claim_redis_db",
    "cluster",
    "nginx",
    "open_cluster",
    "private_cluster",
    "private_redis",
    "redis_url",
    "release_redis_db",
    "render_nginx_conf",
]

NGINX_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"
# Debian installs nginx in /usr/sbin, which is not on every user's PATH.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/local/sbin:/usr/sbin")
REDIS_BASE = re.sub(r"/\d*$", "", os.environ.get("PARLEY_TEST_REDIS_URL", "redis://127.0.0.1:6379"))
REDIS_DBS = range(1, 16)  # db 0 is left to whoever else uses the machine's Redis
CLAIM_KEY = "parley-test-claim"
CLAIM_TTL_S = 600  # a claim left by a killed test run frees itself
OWNER_LEASE_S = 3.0  # the default 15 s would make every takeover test slow
START_TIMEOUT_S = 10.0  # redis-server and nginx: both are up in milliseconds
TERMINATE_TIMEOUT_S = 40.0  # past the default 30 s shutdown grace
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05


# -- processes in their own groups -------------------------------------------------------------------


def spawn_group(
    command: Sequence[str], cwd: Path, out: Path, err: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` in ``cwd`` in its own session (so its process group can be signalled whole),
    appending its output to ``out`` and ``err``."""
    with out.open("ab") as stdout, err.open("ab") as stderr:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )


def end_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` to the process by its pid and wait; SIGKILL its group if it has not gone in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)
    return proc.returncode


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


async def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Wait until something accepts on ``port``; fail at once if ``proc`` exits, or after the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited during startup (exit={proc.returncode})\n{tail(log)}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                pytest.fail(f"{what} not accepting on port {port} after {START_TIMEOUT_S}s\n{tail(log)}")
            await asyncio.sleep(POLL_S)
        else:
            writer.close()
            await writer.wait_closed()
            return


# -- Redis ---------------------------------------------------------------------------------------------


async def claim_redis_db(base: str, token: str) -> str | None:
    """The URL of a db of ``base`` that no one has claimed, now claimed with ``token`` and empty but for the
    claim; None when all are taken. Empty dbs first: one holding keys but no claim may be in use by
    something else, so it is emptied only when no empty db is left (then it is most likely a killed run's)."""
    async with Redis.from_url(base, socket_timeout=5) as client:
        used = await client.info("keyspace")
    for db in sorted(REDIS_DBS, key=lambda n: f"db{n}" in used):
        url = f"{base}/{db}"
        async with Redis.from_url(url, socket_timeout=5) as client:
            if await client.set(CLAIM_KEY, token, nx=True, ex=CLAIM_TTL_S):
                async with client.pipeline(transaction=True) as empty:  # emptied, claim kept: at once
                    empty.flushdb()
                    empty.set(CLAIM_KEY, token, ex=CLAIM_TTL_S)
                    await empty.execute()
                return url
    return None


async def release_redis_db(url: str, token: str) -> None:
    """Empty the db (its claim goes with the rest), if the claim is still ``token``'s."""
    async with Redis.from_url(url, socket_timeout=5) as client:
        if await client.get(CLAIM_KEY) == token.encode():
            await client.flushdb()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """``redis://…/<n>``: a db of the machine's Redis that only this test uses (it holds the key
    ``parley-test-claim`` besides what the test writes)."""
    token = uuid.uuid4().hex
    try:
        url = await claim_redis_db(REDIS_BASE, token)
    except (RedisError, OSError) as exc:
        _unavailable(f"Redis at {REDIS_BASE}", exc)
    if url is None:
        pytest.fail(f"Redis at {REDIS_BASE}: dbs {REDIS_DBS.start}..{REDIS_DBS.stop - 1} are all claimed")
    try:
        yield url
    finally:
        await release_redis_db(url, token)


@dataclass
class RedisServer:
    """A ``redis-server`` of the test's own, without persistence: stopped and started again on the same
    port, it comes back empty, as a restarted cache does."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self) -> None:
        """Start it (again, on the same port) and wait until it accepts connections."""
        assert not self.running, "this redis-server is already running"
        command = ["redis-server", "--save", "", "--appendonly", "no", "--port", str(self.port)]
        command += ["--bind", "127.0.0.1", "--dir", str(self.workdir)]
        self.proc = spawn_group(command, self.workdir, self.log_path, self.log_path)
        await wait_for_port(self.port, self.proc, "redis-server", self.log_path)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop it with ``sig`` (SIGKILL for a crash) and wait until it has gone; its exit code."""
        assert self.proc is not None, "this redis-server was never started"
        return await asyncio.to_thread(end_process, self.proc, sig)


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A running ``redis-server`` of this test's own (``.url``, ``await .stop()``, ``await .start()``)."""
    if shutil.which("redis-server") is None:
        _unavailable("redis-server", "not installed: apt-get install redis-server")
    server = RedisServer(tmp_path / "redis")
    server.workdir.mkdir()
    try:
        await server.start()
        yield server
    finally:
        if server.proc is not None:
            end_process(server.proc, signal.SIGKILL)


# -- parley serve processes ------------------------------------------------------------------------


@dataclass
class Cluster:
    """``parley serve`` processes that are one server: one database, one Redis, one JWT secret.

    ``database_url`` is the plain ``postgresql://`` URL an operator writes; ``engine`` is the test's own,
    on the same database (migrated before any process starts, unless ``open_cluster`` was told not to).
    ``redis_url`` may be changed before a spawn."""

    workdir: Path
    database_url: str
    redis_url: str
    engine: AsyncEngine
    started: list[ServeProcess] = field(default_factory=list)

    def launch(self, name: str, *args: str, **env: str) -> ServeProcess:
        """Start ``parley serve ARGS`` without waiting for it; ``env`` overrides or adds ``PARLEY_*``
        settings (give ``PARLEY_PORT`` to restart one on its old port). Its files are in ``workdir/name``."""
        settings = {
            "PARLEY_DATABASE_URL": self.database_url,
            "PARLEY_REDIS_URL": self.redis_url,
            "PARLEY_JWT_SECRET": SECRET,
            "PARLEY_HOST": "127.0.0.1",
            "PARLEY_PORT": str(free_port()),
            "PARLEY_LOG_LEVEL": "warning",
            "PARLEY_OWNER_LEASE_S": str(OWNER_LEASE_S),
            **env,
        }
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)  # a restart under the same name appends to the same files
        out, err = home / "serve.out", home / "serve.err"
        command = [sys.executable, "-m", "parley", "serve", *args]
        proc = spawn_group(command, home, out, err, cli_env(home / "data", **settings))
        server = ServeProcess(proc, int(settings["PARLEY_PORT"]), out, err)
        self.started.append(server)
        return server

    async def spawn(self, name: str, **env: str) -> ServeProcess:
        """Start a process and wait until its ``/healthz`` answers 200 (or fail, with its output)."""
        server = self.launch(name, **env)
        await server.wait_healthy()
        return server

    async def spawn_many(self, *names: str, **env: str) -> list[ServeProcess]:
        """Start one process per name, all at once, and wait until every one is healthy."""
        return list(await asyncio.gather(*(self.spawn(name, **env) for name in names)))

    def kill(self, server: ServeProcess) -> None:
        """SIGKILL the process's group and reap it: a crash."""
        kill_group(server)

    async def terminate(self, server: ServeProcess, timeout: float = TERMINATE_TIMEOUT_S) -> int:
        """SIGTERM (a graceful shutdown) and wait for the exit; its exit code."""
        server.signal(signal.SIGTERM)
        return await server.wait_exit(timeout)

    def stop(self, server: ServeProcess) -> None:
        """SIGSTOP the process's group: it holds its sockets and leases but does nothing (a hung host)."""
        self._signal_group(server, signal.SIGSTOP)

    def cont(self, server: ServeProcess) -> None:
        """SIGCONT the process's group after ``stop``."""
        self._signal_group(server, signal.SIGCONT)

    def _signal_group(self, server: ServeProcess, sig: int) -> None:
        assert server.proc.poll() is None, f"the process has already exited\n{server.describe()}"
        os.killpg(server.proc.pid, sig)

    def token(self, customer_id: str | int = 1, ttl_s: int = 3600) -> str:
        """A token every process of the cluster accepts."""
        return mint_token(SECRET, str(customer_id), ttl_s)

    async def client(self, ws_url: str, customer_id: str | int = 1) -> ChatClient:
        """A chat connection to ``ws_url`` (a process's or nginx's) as ``customer_id``."""
        return await ChatClient.open(ws_url, self.token(customer_id))


@asynccontextmanager
async def open_cluster(workdir: Path, redis_url: str, migrated: bool = True) -> AsyncIterator[Cluster]:
    """A ``Cluster`` on a fresh PostgreSQL database, migrated unless told not to; every process it started
    is killed on exit and the database dropped."""
    try:
        database = await create_database(PG_ADMIN_DSN)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _unavailable(f"PostgreSQL at {PG_ADMIN_DSN}", exc)
    engine = create_engine(database.url.replace("postgresql://", "postgresql+asyncpg://", 1))
    cluster = Cluster(workdir, database.url, redis_url, engine)
    try:
        # Migrated once before any process starts, so their own migrations are no-ops: without a migration
        # lock, processes starting together on an empty database race to create the same tables and all
        # but one may exit (UniqueViolation on pg_type). `migrated=False` leaves that to the processes.
        if migrated:
            await migrate(engine)
        yield cluster
    finally:
        for server in cluster.started:
            kill_group(server)
        await engine.dispose()
        await drop_database(database)


@pytest.fixture
async def cluster(tmp_path: Path, redis_url: str) -> AsyncIterator[Cluster]:
    """``await cluster.spawn("a")``: processes on a fresh database, sharing this test's ``redis_url`` db."""
    async with open_cluster(tmp_path / "cluster", redis_url) as started:
        yield started


@pytest.fixture
async def private_cluster(tmp_path: Path, private_redis: RedisServer) -> AsyncIterator[Cluster]:
    """Like ``cluster``, on the test's own ``private_redis`` (which the test may stop and start)."""
    async with open_cluster(tmp_path / "cluster", private_redis.url) as started:
        yield started


# -- nginx -----------------------------------------------------------------------------------------

LISTEN_LINE = re.compile(r"^([ \t]*)listen[ \t][^;\n]*;", re.MULTILINE)
UPSTREAM_LINE = re.compile(r"^([ \t]*)server[ \t][^{;\n]*;[ \t]*\n", re.MULTILINE)
LOGGED_UPSTREAM = re.compile(r'"[A-Z]+ (\S*) [^"]*" .*upstream="([^"]*)"')


def render_nginx_conf(template: str, port: int, backends: Sequence[int]) -> str:
    """The shipped config with only its ``listen`` line (now loopback ``port``) and its upstream's ``server``
    lines (now one per backend port) rewritten."""
    text, listens = LISTEN_LINE.subn(rf"\g<1>listen 127.0.0.1:{port};", template)
    first = UPSTREAM_LINE.search(text)
    assert listens == 1 and first, (
        "deploy/nginx.conf lost its one `listen` line or its upstream `server` lines"
    )
    servers = "".join(f"{first.group(1)}server 127.0.0.1:{backend};\n" for backend in backends)
    return text[: first.start()] + servers + UPSTREAM_LINE.sub("", text[first.start() :])


@dataclass
class Nginx:
    """nginx running ``deploy/nginx.conf`` as shipped but for its listen and upstream lines; its pid file,
    logs and temporary files are all in ``prefix`` (the config's paths are relative to it)."""

    prefix: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/chat/ws"

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def command(self, conf: Path) -> list[str]:
        # Run as root (CI), nginx's workers would become `nobody`, who cannot write in the test's
        # private directory: they stay root. As anyone else, nginx keeps its user anyway.
        directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        assert NGINX is not None
        return [NGINX, "-p", f"{self.prefix}/", "-c", str(conf), "-g", directives]

    def check(self, conf: Path) -> None:
        """``nginx -t`` on ``conf``; fail with what nginx said unless it is valid."""
        result = subprocess.run([*self.command(conf), "-t"], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"nginx -t refused {conf}:\n{result.stderr}"

    async def start(self, backends: Sequence[int]) -> Nginx:
        """Render the config for ``backends`` (ports on 127.0.0.1), check it, start nginx and wait until it
        accepts connections."""
        assert self.proc is None, "this nginx was already started"
        self.conf.write_text(render_nginx_conf(NGINX_CONF.read_text(), self.port, backends))
        self.check(self.conf)
        output = self.prefix / "nginx.out"
        self.proc = spawn_group(self.command(self.conf), self.prefix, output, output)
        await wait_for_port(self.port, self.proc, "nginx", self.error_log)
        return self

    def upstreams(self, uri: str | None = None) -> list[str]:
        """The backend (``127.0.0.1:port``) of each logged request (only those for ``uri``, when given), in
        the order they ended; a request retried on another backend shows both (``a, b``). A WebSocket is
        logged when it closes."""
        log = self.prefix / "access.log"
        logged = LOGGED_UPSTREAM.findall(log.read_text()) if log.exists() else []
        return [upstream for path, upstream in logged if uri is None or path == uri]

    def stop(self) -> None:
        """Fast shutdown (SIGTERM: open sockets are closed, not drained) and wait."""
        if self.proc is not None:
            end_process(self.proc)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    """An nginx not yet started: ``await nginx.start([a.port, b.port])``, then ``nginx.ws_url``."""
    if NGINX is None:
        _unavailable("nginx", "not installed: apt-get install nginx")
    proxy = Nginx(tmp_path / "nginx")
    proxy.prefix.mkdir()
    try:
        yield proxy
    finally:
        proxy.stop()
