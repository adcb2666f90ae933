"""Starting and stopping the servers under test as subprocesses: the floor and Parley, each on its own core.

Parley runs as a user runs it, ``python -m parley serve``, configured only through ``PARLEY_*`` variables, in
a scratch directory (so no ``.env`` is picked up) with its own data directory. Every process is started in
its own session and stopped by its pid: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench.metrics import raise_nofile_limit

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
ServerKind = Literal["floor", "parley", "baseline", "sqlite", "redis", "cluster"]
Source = Literal["parley", "baseline"]
CLUSTER_PROCESSES = 2  # the "cluster" kind's `parley serve` processes


@dataclass(frozen=True)
class Variant:
    """What a Parley kind of server is: which code, on which database, with Redis, how many processes."""

    source: Source = "parley"  # "parley": the working tree (or ``--parley-rev``); "baseline": --baseline-rev
    database: str | None = None  # None: the scenario's; "sqlite": SQLite whatever the scenario's is
    redis: bool = False  # with ``PARLEY_REDIS_URL`` (a redis-server of the run's own)
    processes: int = 1  # `parley serve` processes sharing the database and Redis (one JWT secret)
    metrics: bool = True  # False: ``PARLEY_METRICS=false`` (no metrics recorded, no ``GET /metrics``)


# The servers that are Parley. "baseline" is the code to compare with side by side (the `resume`
# scenario); "sqlite" is Parley on SQLite beside the scenario's PostgreSQL (`sweep-postgres`); "redis" and
# "cluster" are scale-out (`scaleout`): one process with Redis, and processes sharing PostgreSQL + Redis;
# "nometrics" is Parley with its Prometheus metrics turned off, beside "parley" with them on (`metrics`).
VARIANTS: dict[str, Variant] = {
    "parley": Variant(),
    "baseline": Variant(source="baseline"),
    "sqlite": Variant(database="sqlite"),
    "redis": Variant(redis=True),
    "cluster": Variant(redis=True, processes=CLUSTER_PROCESSES),
    "nometrics": Variant(metrics=False),
}
PARLEY_KINDS = frozenset(VARIANTS)
DEFAULT_BASELINE_REV = "0a9d2ec"  # the code before the turn event logs (parley/streams.py)

# What the harness sets besides host, port, secret, data dir and database; the report prints these.
PARLEY_BENCH_SETTINGS: dict[str, str] = {
    "PARLEY_LOG_LEVEL": "warning",
    # coalescing off (the default), so every delta is a frame as at the floor; `coalesce` sets its own
    "PARLEY_COALESCE_MS": "0",
    "PARLEY_SEND_STALL_TIMEOUT_S": "2",  # default 10: the slow-reader scenario would need minutes
    "PARLEY_SHUTDOWN_GRACE_S": "2",  # default 30: nothing is running when the harness stops it
    "PARLEY_MAX_QUEUED_REQUESTS": "8",  # the default; the generator sends one request at a time anyway
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned_to(cores: set[int]) -> Callable[[], None]:
    """A ``preexec_fn``: the child (and every thread it starts) runs on ``cores``, with files raised."""

    def setup() -> None:
        if cores:
            os.sched_setaffinity(0, cores)
        raise_nofile_limit()

    return setup


MINT_TOKENS = """
import json, sys
from parley.auth import mint_token
print(json.dumps([mint_token(sys.argv[1], f"bench-{i}", 86400) for i in range(int(sys.argv[2]))]))
"""


@dataclass(frozen=True)
class ParleySource:
    """Which Parley runs: the working tree (``path`` None, through the editable install) or an export."""

    path: Path | None
    description: str


def clean_env(extra: Mapping[str, str], first: Path | None = None) -> dict[str, str]:
    """This environment without any ``PARLEY_*`` of the caller's, plus ``extra``; ``first`` (a Parley
    source), then the repo, come first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    paths = [str(first) if first else "", str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra)
    return env


def export_revision(revision: str, dest: Path) -> ParleySource:
    """``git archive`` the ``parley`` package of a revision into ``dest`` (reads git, changes nothing)."""

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=True).stdout

    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}").decode().strip()
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=git("archive", commit, "parley"), check=True)
    return ParleySource(dest, f"{commit[:10]} (`--parley-rev {revision}`, exported with git archive)")


@dataclass
class Server:
    """A running server under test."""

    kind: ServerKind
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    workdir: Path
    secret: str = ""
    database: str = "sqlite"
    database_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    source: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/chat/ws"

    @property
    def sqlite_path(self) -> Path:
        return self.workdir / "data" / "parley.db"

    def tokens(self, customers: int) -> list[str]:
        """Tokens for ``customers`` different customers (none needed by the floor)."""
        if self.kind == "floor":
            return []
        command = [sys.executable, "-c", MINT_TOKENS, self.secret, str(customers)]
        env = clean_env({}, self.source)  # minted by the Parley under test
        done = subprocess.run(command, env=env, cwd=self.workdir, capture_output=True, text=True, check=True)
        tokens: list[str] = json.loads(done.stdout)
        return tokens

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll ``/healthz`` until it answers 200; fail with the log's tail if the process dies first."""
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.port}/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} did not answer {url} within {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; return the exit code."""
        return stop_process(self.proc)

    def probe_metrics(self, timeout_s: float = 5.0) -> dict[str, float | int | None]:
        """``GET /metrics``: its HTTP status (404 with ``PARLEY_METRICS=false``; None if nothing
        answered) and, when it answered 200, ``parley_text_deltas_total`` (the scrape flushes the count),
        so a run shows whether its server recorded metrics."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                body = response.read().decode(errors="replace")
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            return {"status": exc.code, "text_deltas": None}
        except (OSError, urllib.error.URLError):
            return {"status": None, "text_deltas": None}
        counted = [line for line in body.splitlines() if line.startswith("parley_text_deltas_total")]
        deltas = float(counted[0].split()[-1]) if counted else None
        return {"status": status, "text_deltas": deltas}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(
    command: list[str], env: dict[str, str], cwd: Path, log_path: Path, cores: set[int]
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=pinned_to(cores),
            start_new_session=True,
        )


def start_floor(cores: set[int], scratch: Path) -> Server:
    workdir = Path(tempfile.mkdtemp(prefix="floor-", dir=scratch))
    port = free_port()
    log_path = workdir / "server.log"
    command = [sys.executable, "-m", "bench.floor", "--port", str(port)]
    proc = spawn(command, clean_env({}), REPO, log_path, cores)
    server = Server("floor", proc, port, log_path, workdir)
    server.wait_ready()
    return server


def parley_env(
    port: int,
    secret: str,
    data_dir: Path,
    database_url: str | None,
    extra: Mapping[str, str] | None = None,
    metrics: bool = True,
) -> dict[str, str]:
    """Parley's ``PARLEY_*`` settings: where it listens and stores, the bench's settings, then ``extra``
    (``--parley-env`` and the scenario's own) over them; without ``metrics``, ``PARLEY_METRICS=false``
    over everything (it is what the variant is)."""
    env = {
        "PARLEY_HOST": "127.0.0.1",
        "PARLEY_PORT": str(port),
        "PARLEY_JWT_SECRET": secret,
        "PARLEY_DATA_DIR": str(data_dir),
        **PARLEY_BENCH_SETTINGS,
    }
    if database_url:
        env["PARLEY_DATABASE_URL"] = database_url
    env = {**env, **(extra or {})}
    if not metrics:
        env["PARLEY_METRICS"] = "false"
    return env


def start_parley(
    cores: set[int],
    scratch: Path,
    database: str,
    database_url: str | None,
    source: ParleySource,
    extra_env: Mapping[str, str],
    kind: ServerKind = "parley",
    secret: str | None = None,
    metrics: bool = True,
) -> Server:
    """Parley from ``source``; ``kind`` "baseline" when it is the revision to compare with. Processes of
    one cluster are given the same ``secret`` (a token minted for one is good on all). Without
    ``metrics``, it runs with ``PARLEY_METRICS=false``."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=scratch))
    port = free_port()
    secret = secret or secrets.token_urlsafe(48)
    env = parley_env(port, secret, workdir / "data", database_url, extra_env, metrics)
    log_path = workdir / "server.log"
    command = [sys.executable, "-m", "parley", "serve"]
    proc = spawn(command, clean_env(env, source.path), workdir, log_path, cores)
    server = Server(kind, proc, port, log_path, workdir, secret, database, database_url, env, source.path)
    server.wait_ready()
    return server


@dataclass
class RedisServer:
    """A ``redis-server`` of the run's own (no persistence), on a free port, in its own session; stopped by
    its pid. Unpinned, like PostgreSQL: it runs on any of ``cores``."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        stop_process(self.proc)
        raise RuntimeError(f"redis-server did not answer on port {self.port}: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""


def start_redis(cores: set[int], scratch: Path) -> RedisServer:
    workdir = Path(tempfile.mkdtemp(prefix="redis-", dir=scratch))
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    command += ["no", "--dir", str(workdir)]
    log_path = workdir / "redis.log"
    redis = RedisServer(spawn(command, os.environ.copy(), workdir, log_path, cores), port, log_path)
    redis.wait_ready()
    return redis


def stop_process(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM by pid, wait, SIGKILL if needed; the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


@dataclass
class Deployment:
    """The servers of one run: one server, or the processes of a cluster (the first is the main one: its
    pid is the live line's and its port the generator's default), and their Redis if they have one."""

    servers: list[Server]
    redis: RedisServer | None = None

    @property
    def main(self) -> Server:
        return self.servers[0]

    def stop(self) -> int | None:
        """Stop every process (Redis last); the first nonzero exit code of the servers, else the main's."""
        codes = [server.stop() for server in self.servers]
        if self.redis is not None:
            stop_process(self.redis.proc)
        return next((c for c in codes if c), codes[0] if codes else None)


def log_findings(server: Server, samples: int = 8) -> dict[str, object]:
    """Warnings, errors and tracebacks in the server's output: counts and the first few lines."""
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return {"warnings": 0, "errors": 0, "tracebacks": 0, "samples": []}
    marks = ("WARNING", "ERROR", "CRITICAL", "Traceback")
    return {
        "warnings": sum("WARNING" in line for line in lines),
        "errors": sum("ERROR" in line or "CRITICAL" in line for line in lines),
        "tracebacks": sum(line.startswith("Traceback") for line in lines),
        "samples": [line[:300] for line in lines if any(m in line for m in marks)][:samples],
    }
