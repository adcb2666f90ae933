"""The ``parley`` command in subprocesses: ``token``, ``migrate`` and ``serve`` (with and without --dev)."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from parley.auth import mint_token
from parley.cli import dev_banner
from parley.config import Settings
from tests.invariants import TurnSummary
from tests.wsclient import ChatClient

SECRET = "cli-test-secret-" + "q" * 40
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
TRY_LINE = re.compile(r"^Try it:\s+(.+)$", re.MULTILINE)
TOKEN_LINE = re.compile(r"^\s+(eyJ[\w-]+\.[\w-]+\.[\w-]+)\s*$", re.MULTILINE)


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The test's environment without any PARLEY_ or provider settings, plus ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PARLEY_") and k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    }
    env["PARLEY_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def run_cli(
    args: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m parley ARGS`` to completion (cwd is a scratch directory: no stray .env file)."""
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class ServeProcess:
    """A ``parley serve`` subprocess whose output goes to files in the test's directory."""

    proc: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/chat/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        return (
            f"exit={self.proc.poll()}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"
        )

    async def wait_healthy(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Poll /healthz until it answers 200; fail early if the process dies."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(base_url=self.http_url, timeout=2) as http:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"parley serve exited during startup\n{self.describe()}")
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if loop.time() > deadline:
                    pytest.fail(f"parley serve not healthy after {timeout}s\n{self.describe()}")
                await asyncio.sleep(0.1)

    def dev_token(self) -> str:
        found = TOKEN_LINE.search(self.stdout)
        assert found, f"no token in the dev banner\n{self.describe()}"
        return found.group(1)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Wait for the process to end by itself; kill it (and fail) after ``timeout``."""
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"parley serve did not exit within {timeout}s\n{self.describe()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go: never leave a server behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def spawn_serve(workdir: Path, env: dict[str, str], args: Sequence[str]) -> ServeProcess:
    """Start ``parley serve ARGS --port <free>``, its output going to files in ``workdir``."""
    port = free_port()
    stdout_path, stderr_path = workdir / "serve.out", workdir / "serve.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley", "serve", *args, "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=err,
        )
    return ServeProcess(proc, port, stdout_path, stderr_path)


@asynccontextmanager
async def parley_serve(
    workdir: Path, env: dict[str, str], *args: str, healthy: bool = True
) -> AsyncIterator[ServeProcess]:
    """A ``parley serve`` subprocess, healthy (unless told not to wait), stopped by its pid on exit."""
    server = spawn_serve(workdir, env, args)
    try:
        if healthy:
            await server.wait_healthy()
        yield server
    finally:
        server.stop()


async def one_turn(url: str, token: str, model: str, prompt: str = "Hello CLI") -> TurnSummary:
    async with await ChatClient.open(url, token) as client:
        return await client.turn(await client.chat(prompt, model=model))


def try_it_line(stdout: str) -> tuple[dict[str, str], list[str]]:
    """The dev banner's "Try it" line: its leading NAME=value words, and the command after them."""
    found = TRY_LINE.search(stdout)
    assert found, f"no Try it line in the dev banner\n{stdout}"
    words = shlex.split(found.group(1))
    assignments: dict[str, str] = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value
    return assignments, words


def verify(token: str, secret: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(token, secret, algorithms=["HS256"])
    return claims


# -- token -------------------------------------------------------------------------------------------


def test_token_is_signed_with_the_configured_secret(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_cli(
        ["token", "--customer-id", "7", "--ttl", "60"], cli_env(data_dir, PARLEY_JWT_SECRET=SECRET), tmp_path
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert TOKEN_LINE.match("  " + token), result.stdout
    claims = verify(token, SECRET)
    assert claims["customer_id"] == "7"
    assert isinstance(claims["exp"], int) and isinstance(claims["iat"], int)
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    with pytest.raises(jwt.InvalidSignatureError):
        verify(token, "some-other-secret-" + "w" * 40)
    assert not (data_dir / "jwt_secret").exists(), "a configured secret needs no generated one"


def test_token_default_ttl_is_a_day(tmp_path: Path) -> None:
    result = run_cli(["token", "--customer-id", "abc"], cli_env(tmp_path, PARLEY_JWT_SECRET=SECRET), tmp_path)
    assert result.returncode == 0, result.stderr
    claims = verify(result.stdout.strip(), SECRET)
    assert claims["customer_id"] == "abc"
    assert claims["exp"] - claims["iat"] == 24 * 3600  # type: ignore[operator]


def test_token_dev_creates_and_reuses_a_private_secret(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"  # does not exist yet
    env = cli_env(data_dir)
    first = run_cli(["token", "--dev", "--customer-id", "7", "--ttl", "60"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    secret_file = data_dir / "jwt_secret"
    assert secret_file.is_file()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32
    assert verify(first.stdout.strip(), secret)["customer_id"] == "7"

    second = run_cli(["token", "--dev", "--customer-id", "8"], env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert secret_file.read_text().strip() == secret, "the secret must be reused, not regenerated"
    assert verify(second.stdout.strip(), secret)["customer_id"] == "8"


def test_token_requires_a_customer_id(tmp_path: Path) -> None:
    result = run_cli(["token"], cli_env(tmp_path, PARLEY_JWT_SECRET=SECRET), tmp_path)
    assert result.returncode != 0
    assert "customer-id" in result.stderr


# -- migrate -----------------------------------------------------------------------------------------


def sqlite_tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_migrate_creates_the_tables_and_is_idempotent(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = cli_env(data_dir)
    first = run_cli(["migrate"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    database = data_dir / "parley.db"
    assert database.is_file()
    tables = sqlite_tables(database)
    assert {"chat_sessions", "chat_messages", "alembic_version"} <= tables
    with closing(sqlite3.connect(database)) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(chat_messages)")}
        versions = db.execute("SELECT version_num FROM alembic_version").fetchall()
    assert {
        "id",
        "session_id",
        "role",
        "content",
        "reasoning",
        "status",
        "model",
        "usage",
        "created_at",
    } <= columns
    assert len(versions) == 1

    second = run_cli(["migrate"], env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert sqlite_tables(database) == tables
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == versions
    assert "parley.db" in first.stdout  # it says which database it migrated
    assert "applied 0001: Chat sessions and messages" in first.stdout, first.stdout
    assert "no migrations were due" in second.stdout and "applied" not in second.stdout, second.stdout


def test_migrate_honours_database_url(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "custom.db"
    env = cli_env(tmp_path / "data", PARLEY_DATABASE_URL=f"sqlite+aiosqlite:///{target}")
    result = run_cli(["migrate"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert {"chat_sessions", "chat_messages"} <= sqlite_tables(target)
    assert not (tmp_path / "data" / "parley.db").exists()


# -- serve -------------------------------------------------------------------------------------------


async def test_serve_dev_prints_a_working_token_and_stands_in_for_models(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with parley_serve(tmp_path, cli_env(data_dir), "--dev") as server:
        token = server.dev_token()
        secret = (data_dir / "jwt_secret").read_text().strip()
        assert verify(token, secret)["customer_id"] == "1"
        assert stat.S_IMODE((data_dir / "jwt_secret").stat().st_mode) == 0o600

        # The banner's "Try it" line, run as printed, passes against this very server.
        assignments, command = try_it_line(server.stdout)
        assert assignments["BACKEND_WS_URL"] == server.ws_url  # not the default port: the URL is given
        assert command[0] == sys.executable  # the venv's Python, not whatever `python` is
        tried = await asyncio.to_thread(
            subprocess.run,
            command,
            env={**cli_env(data_dir), **assignments},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert tried.returncode == 0 and "TEST PASSED" in tried.stdout, tried.stdout + tried.stderr

        turn = await one_turn(server.ws_url, token, "gpt-4o-mini")
        assert turn.status == "completed"
        assert turn.events[0]["content"]["provider"] == "demo"
        assert turn.events[0]["content"]["model"] == "gpt-4o-mini"
        assert turn.text

        # The printed token reads the session back over REST too.
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
            response = await http.get(
                f"/api/v1/sessions/{turn.session_id}", headers={"Authorization": f"Bearer {token}"}
            )
        assert response.status_code == 200
        assert [m["id"] for m in response.json()["messages"]] == [turn.user_message_id, turn.ai_message_id]

        # `parley token` with the same data directory mints tokens the dev server accepts.
        minted = run_cli(["token", "--dev", "--customer-id", "2", "--ttl", "60"], cli_env(data_dir), tmp_path)
        assert minted.returncode == 0, minted.stderr
        other = await one_turn(server.ws_url, minted.stdout.strip(), "demo")
        assert other.status == "completed"
    assert (data_dir / "parley.db").is_file()


async def test_serve_dev_reuses_its_secret_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with parley_serve(tmp_path, cli_env(data_dir), "--dev") as first:
        token = first.dev_token()
    async with parley_serve(tmp_path, cli_env(data_dir), "--dev") as second:
        turn = await one_turn(second.ws_url, token, "demo")
    assert turn.status == "completed"


async def test_serve_without_dev_does_not_stand_in(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data", PARLEY_JWT_SECRET=SECRET)
    async with parley_serve(tmp_path, env) as server:
        assert not TOKEN_LINE.search(server.stdout), "only --dev prints a token"
        token = run_cli(["token", "--customer-id", "1", "--ttl", "300"], env, tmp_path).stdout.strip()

        refused = await one_turn(server.ws_url, token, "gpt-4o-mini")
        assert refused.status == "error" and refused.error is not None
        assert (refused.error["stage"], refused.error["code"]) == ("validation", "provider_not_configured")
        assert "OPENAI_API_KEY" in refused.error["content"]
        assert refused.events[0]["content"]["provider"] is None

        demo = await one_turn(server.ws_url, token, "demo")
        assert demo.status == "completed"
        assert demo.events[0]["content"]["provider"] == "demo"

        # The server holds no dev secret: a token signed with anything else is refused.
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
            forged = jwt.encode({"customer_id": "1"}, "not-the-secret-" + "v" * 40, algorithm="HS256")
            response = await http.get(
                f"/api/v1/sessions/{demo.session_id}", headers={"Authorization": f"Bearer {forged}"}
            )
        assert response.status_code == 401
    assert not (tmp_path / "data" / "jwt_secret").exists()


async def test_serve_without_dev_or_secret_refuses_to_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with parley_serve(tmp_path, cli_env(data_dir), healthy=False) as server:
        code = await server.wait_exit(timeout=STARTUP_TIMEOUT_S)
    assert code != 0
    assert code > 0, f"expected a clean error exit, got signal {-code}"
    assert "PARLEY_JWT_SECRET" in server.stderr, server.describe()
    assert "Traceback" not in server.stderr, server.describe()
    assert not (data_dir / "jwt_secret").exists()


@pytest.mark.parametrize("customer_id", ["x" * 256, "a\x01b", "tab\there", "\ud800", ""])
def test_minting_refuses_an_identity_the_server_would_refuse(customer_id: str) -> None:
    with pytest.raises(ValueError, match="customer id must"):
        mint_token("s" * 32, customer_id)


def test_token_command_refuses_an_identity_the_server_would_refuse(tmp_path: Path) -> None:
    env = cli_env(tmp_path, PARLEY_JWT_SECRET=SECRET)
    result = run_cli(["token", "--customer-id", "x" * 256], env, tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "customer id must be at most 255 characters" in result.stderr


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("127.0.0.1", 8000, None),
        ("127.0.0.1", 9000, "ws://127.0.0.1:9000/chat/ws"),
        ("0.0.0.0", 8000, "ws://127.0.0.1:8000/chat/ws"),
        ("::1", 8001, "ws://[::1]:8001/chat/ws"),
    ],
)
def test_the_dev_banner_names_the_url_unless_it_is_the_default(host: str, port: int, url: str | None) -> None:
    banner = dev_banner(Settings(host=host, port=port, jwt_secret="s" * 40), "eyJ.x.y")
    assignments, command = try_it_line(banner)
    assert assignments.get("BACKEND_WS_URL") == url
    assert assignments["JWT_TOKEN"] == "eyJ.x.y"
    assert (
        Path(command[0]).name.startswith("python")
        and Path(command[0]).resolve() == Path(sys.executable).resolve()
    )
    assert command[1].endswith("tests/manual/test_session_persistence_manual.py")


def test_the_dev_banner_hides_a_database_password() -> None:
    settings = Settings(database_url="postgresql://parley:hunter2@db:5432/parley", jwt_secret="s" * 40)
    assert "hunter2" not in dev_banner(settings, "eyJ.x.y")
