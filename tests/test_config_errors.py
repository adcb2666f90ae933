"""Every configuration mistake ends the real ``parley`` command with exit 2 and one ``parley:`` line.

The line names the variable or file and what is wrong (for a database: host, port and cause); there is no
traceback unless ``--debug`` or ``PARLEY_LOG_LEVEL=debug`` asks for one.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.test_cli import cli_env, free_port

PARLEY = str(Path(sys.executable).parent / "parley")  # the venv's own command, as an operator runs it
SECRET = "config-test-secret-" + "s" * 40
COMMANDS = [["serve"], ["token", "--customer-id", "1"], ["migrate"]]


def parley(args: Sequence[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PARLEY, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def refused(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """Assert the one-line refusal and return the line."""
    described = f"exit={result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 2, described
    assert "Traceback" not in result.stderr, described
    lines = result.stderr.splitlines()
    assert len(lines) == 1, described
    line = lines[0]
    assert line.startswith("parley: "), described
    for needle in named:
        assert needle in line, described
    return line


def env_for(tmp_path: Path, **settings: str) -> dict[str, str]:
    return cli_env(tmp_path / "data", **settings)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (a firewall that drops, a hung server)."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


# -- PARLEY_* values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_bad_value_names_its_variable(tmp_path: Path, command: list[str]) -> None:
    env = env_for(tmp_path, PARLEY_EVENT_DIALECT="kebab", PARLEY_JWT_SECRET=SECRET)
    line = refused(parley(command, env, tmp_path), "PARLEY_EVENT_DIALECT", "'kebab'", "camel")
    assert "validation error" not in line


def test_every_bad_value_is_named_on_the_one_line(tmp_path: Path) -> None:
    env = env_for(tmp_path, PARLEY_PORT="eighty", PARLEY_LOG_LEVEL="verbose", PARLEY_JWT_SECRET=SECRET)
    refused(parley(["serve"], env, tmp_path), "PARLEY_PORT='eighty'", "integer", "PARLEY_LOG_LEVEL='verbose'")


def test_a_secret_value_is_never_echoed(tmp_path: Path) -> None:
    env = env_for(tmp_path, PARLEY_DATABASE_URL="", PARLEY_REDIS_URL="", PARLEY_JWT_SECRET=SECRET)
    env["PARLEY_MAX_TURN_S"] = "-1"
    line = refused(parley(["serve"], env, tmp_path), "PARLEY_MAX_TURN_S")
    assert SECRET not in line


def test_a_hostile_value_stays_on_one_line(tmp_path: Path) -> None:
    env = env_for(tmp_path, PARLEY_EVENT_DIALECT="camel\nparley: forged" + "x" * 10_000)
    line = refused(parley(["migrate"], env, tmp_path), "PARLEY_EVENT_DIALECT")
    assert len(line) < 600


# -- the database -------------------------------------------------------------------------------------


def closed_port() -> int:
    return free_port()  # free a moment ago, nothing listens on it now


@pytest.mark.parametrize("command", [["serve"], ["migrate"]], ids=lambda c: c[0])
def test_a_refused_database_names_host_port_and_cause(tmp_path: Path, command: list[str]) -> None:
    port = closed_port()
    url = f"postgresql://parley:hunter2@127.0.0.1:{port}/parley"
    env = env_for(tmp_path, PARLEY_DATABASE_URL=url, PARLEY_JWT_SECRET=SECRET)
    line = refused(parley(command, env, tmp_path), "PARLEY_DATABASE_URL", f"127.0.0.1:{port}", "refused")
    assert "hunter2" not in line


def test_a_silent_database_times_out_by_name(tmp_path: Path, silent_port: int) -> None:
    url = f"postgresql://parley@127.0.0.1:{silent_port}/parley"
    env = env_for(
        tmp_path, PARLEY_DATABASE_URL=url, PARLEY_JWT_SECRET=SECRET, PARLEY_DATABASE_CONNECT_TIMEOUT_S="0.5"
    )
    refused(parley(["serve"], env, tmp_path), f"127.0.0.1:{silent_port}", "no answer within 0.5s")


def test_a_database_host_that_does_not_resolve_says_dns(tmp_path: Path) -> None:
    url = "postgresql://parley@db.parley-test.invalid:6543/parley"
    env = env_for(tmp_path, PARLEY_DATABASE_URL=url, PARLEY_JWT_SECRET=SECRET)
    refused(parley(["migrate"], env, tmp_path), "db.parley-test.invalid:6543", "DNS")


def test_a_refused_login_says_authentication(tmp_path: Path, postgres_url: str) -> None:
    server = make_url(postgres_url)
    url = server.set(username="parley_no_such_role", password=None).render_as_string(hide_password=False)
    env = env_for(tmp_path, PARLEY_DATABASE_URL=url, PARLEY_JWT_SECRET=SECRET)
    refused(parley(["migrate"], env, tmp_path), f"{server.host}:{server.port}", "authentication failed")


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mysql://parley@127.0.0.1/parley", "unsupported scheme 'mysql'"),
        ("postgresql+psycopg2://parley@127.0.0.1/parley", "unsupported driver"),
        ("not a url", "is not a database URL"),
    ],
)
def test_an_unusable_database_url_is_refused(tmp_path: Path, url: str, named: str) -> None:
    env = env_for(tmp_path, PARLEY_DATABASE_URL=url, PARLEY_JWT_SECRET=SECRET)
    refused(parley(["serve"], env, tmp_path), "PARLEY_DATABASE_URL", named)


def test_a_data_dir_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = cli_env(blocker / "data", PARLEY_JWT_SECRET=SECRET)
    refused(parley(["migrate"], env, tmp_path), "PARLEY_DATA_DIR", str(blocker))


# -- the JWT secret -----------------------------------------------------------------------------------


def test_serve_without_a_secret_is_refused(tmp_path: Path) -> None:
    refused(parley(["serve"], env_for(tmp_path), tmp_path), "PARLEY_JWT_SECRET is not set", "--dev")
    assert not (tmp_path / "data" / "jwt_secret").exists()


def test_token_without_a_secret_refuses_instead_of_inventing_one(tmp_path: Path) -> None:
    result = parley(["token", "--customer-id", "1"], env_for(tmp_path), tmp_path)
    refused(result, "PARLEY_JWT_SECRET is not set", "--dev")
    assert result.stdout == ""
    assert not (tmp_path / "data" / "jwt_secret").exists()


def test_token_with_only_a_public_key_cannot_sign(tmp_path: Path) -> None:
    env = env_for(tmp_path, PARLEY_JWT_PUBLIC_KEY="-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----")
    refused(parley(["token", "--customer-id", "1"], env, tmp_path), "PARLEY_JWT_SECRET is not set")


@pytest.mark.parametrize("command", COMMANDS[:2], ids=lambda c: c[0])
def test_a_short_secret_is_refused(tmp_path: Path, command: list[str]) -> None:
    env = env_for(tmp_path, PARLEY_JWT_SECRET="s" * 31)
    refused(parley(command, env, tmp_path), "PARLEY_JWT_SECRET is 31 bytes", "at least 32")


def test_dev_mode_takes_a_short_secret(tmp_path: Path) -> None:
    env = env_for(tmp_path, PARLEY_JWT_SECRET="short")
    result = parley(["token", "--dev", "--customer-id", "1"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("eyJ")


def test_an_unreadable_public_key_file_is_named(tmp_path: Path) -> None:
    env = env_for(tmp_path, PARLEY_JWT_PUBLIC_KEY=str(tmp_path / "missing.pem"))
    refused(parley(["serve"], env, tmp_path), "PARLEY_JWT_PUBLIC_KEY", "missing.pem")


# -- the models and MCP files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[providers.local\nkind = 'openai'", "cannot read the models file"),
        ("[providers.local]\nkind = 'nope'\nbase_url = 'http://127.0.0.1:1/v1'\n", "providers.local.kind"),
        ("[providers.local]\nkind = 'openai'\n", "providers.local needs base_url"),
    ],
    ids=["syntax", "value", "missing"],
)
def test_a_bad_models_file_is_named(tmp_path: Path, text: str, named: str) -> None:
    models = tmp_path / "models.toml"
    models.write_text(text)
    env = env_for(tmp_path, PARLEY_MODELS_FILE=str(models), PARLEY_JWT_SECRET=SECRET)
    refused(parley(["serve"], env, tmp_path), "PARLEY_MODELS_FILE", str(models), named)


def test_a_missing_models_file_is_named(tmp_path: Path) -> None:
    env = env_for(tmp_path, PARLEY_MODELS_FILE=str(tmp_path / "nowhere.toml"), PARLEY_JWT_SECRET=SECRET)
    refused(parley(["serve"], env, tmp_path), "PARLEY_MODELS_FILE", "nowhere.toml")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[mcp_servers.files\ncommand = 'x'", "cannot read the MCP file"),
        ("[mcp_servers.files]\nurl = 'ftp://example'\n", "mcp_servers.files"),
    ],
    ids=["syntax", "value"],
)
def test_a_bad_mcp_file_is_named(tmp_path: Path, text: str, named: str) -> None:
    mcp = tmp_path / "mcp.toml"
    mcp.write_text(text)
    env = env_for(tmp_path, PARLEY_MCP_FILE=str(mcp), PARLEY_JWT_SECRET=SECRET)
    refused(parley(["serve"], env, tmp_path), "PARLEY_MCP_FILE", str(mcp), named)


# -- asking for the traceback -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--debug", "PARLEY_LOG_LEVEL=debug"])
def test_debug_adds_the_traceback(tmp_path: Path, how: str) -> None:
    port = closed_port()
    env = env_for(
        tmp_path, PARLEY_DATABASE_URL=f"postgresql://p@127.0.0.1:{port}/p", PARLEY_JWT_SECRET=SECRET
    )
    args = ["migrate"]
    if how == "--debug":
        args.append(how)
    else:
        env["PARLEY_LOG_LEVEL"] = "debug"
    result = parley(args, env, tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"parley: PARLEY_DATABASE_URL: cannot use PostgreSQL at 127.0.0.1:{port}"
    )


# -- --version ----------------------------------------------------------------------------------------


def test_version_comes_from_the_package(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = parley(["--version"], env_for(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"parley {version('parley')}"


def test_a_redis_url_of_another_scheme_is_named(tmp_path: Path) -> None:
    env = env_for(tmp_path, PARLEY_REDIS_URL="http://cache.internal:6379", PARLEY_JWT_SECRET=SECRET)
    refused(parley(["serve"], env, tmp_path), "PARLEY_REDIS_URL", "redis://")


def test_a_port_another_process_holds_is_named(tmp_path: Path, silent_port: int) -> None:
    env = env_for(tmp_path, PARLEY_PORT=str(silent_port), PARLEY_JWT_SECRET=SECRET)
    refused(
        parley(["serve"], env, tmp_path),
        f"cannot listen on 127.0.0.1:{silent_port}",
        "address already in use",
    )


def test_a_dev_secret_that_cannot_be_kept_names_the_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = cli_env(blocker / "data")
    refused(parley(["token", "--dev", "--customer-id", "1"], env, tmp_path), "PARLEY_DATA_DIR", "dev secret")
