"""Every configuration mistake ends the real ``parley`` command with exit 2 and one ``parley:`` line.

The line names the variable or file and what is wrong (for a database: host, port and cause); there is no
traceback unless ``--debug`` or ``PARLEY_LOG_LEVEL=debug`` asks for one.

Each case is a real ``parley`` subprocess. Most of a case's time is the interpreter importing Parley, so
the cases' subprocesses run side by side, a few at a time, when the module's first test needs them
(``ran``), each in a directory of its own; each test then checks its own case's result.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.test_cli import cli_env, free_port

PARLEY = str(Path(sys.executable).parent / "parley")  # the venv's own command, as an operator runs it
SECRET = "config-test-secret-" + "s" * 40
COMMANDS = [["serve"], ["token", "--customer-id", "1"], ["migrate"]]
TIMEOUT_S = 60  # a guard against a hang, per case


def parley(args: Sequence[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PARLEY, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
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


def listening_socket() -> socket.socket:
    """A socket that accepts connections and never says a word (a firewall that drops, a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


# -- the cases: each prepares its directory and says how ``parley`` is run ---------------------------


@dataclass
class Case:
    args: list[str]
    env: dict[str, str]


@dataclass
class Ran:
    result: subprocess.CompletedProcess[str]
    path: Path  # the case's own directory (its cwd)
    args: list[str]
    port: int  # the case's port: closed, or silent


Prepare = Callable[[Path, int], Case]  # (the case's directory, its port) -> how parley is run
CASES: dict[str, Prepare] = {}
SILENT: set[str] = set()  # the cases whose port accepts and never answers; the others' is closed


def case(name: str, silent: bool = False) -> Callable[[Prepare], Prepare]:
    def register(prepare: Prepare) -> Prepare:
        assert name not in CASES, name
        CASES[name] = prepare
        if silent:
            SILENT.add(name)
        return prepare

    return register


def cases(name: str, make: Callable[..., Case], **given: Any) -> None:
    """A case of a parametrized test: ``make(directory, port, **given)``."""
    case(name)(functools.partial(make, **given))


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Ran]]:
    """Every case's ``parley``, a few at a time (enough to keep every core busy), waited for; their
    results by case name."""
    with ExitStack() as stack:
        prepared: dict[str, tuple[Case, Path, int]] = {}
        for name, prepare in CASES.items():
            path = tmp_path_factory.mktemp(name)
            if name in SILENT:
                port: int = stack.enter_context(closing(listening_socket())).getsockname()[1]
            else:
                port = free_port()  # free a moment ago, nothing listens on it now
            prepared[name] = (prepare(path, port), path, port)
        with ThreadPoolExecutor(
            max_workers=2 * (os.cpu_count() or 1), thread_name_prefix="parley-case"
        ) as pool:
            # subprocess.run kills its process on a timeout or any other exception: none is left behind.
            running = {
                name: pool.submit(parley, case.args, case.env, path)
                for name, (case, path, _) in prepared.items()
            }
            results = {
                name: Ran(running[name].result(), path, case.args, port)
                for name, (case, path, port) in prepared.items()
            }
        yield results


# -- PARLEY_* values -----------------------------------------------------------------------------------

COMMAND_IDS = [c[0] for c in COMMANDS]


def _bad_value(d: Path, _: int, command: list[str]) -> Case:
    return Case(command, env_for(d, PARLEY_EVENT_DIALECT="kebab", PARLEY_JWT_SECRET=SECRET))


for command in COMMANDS:
    cases(f"bad-value-{command[0]}", _bad_value, command=command)


@pytest.mark.parametrize("command", COMMAND_IDS)
def test_a_bad_value_names_its_variable(ran: dict[str, Ran], command: str) -> None:
    line = refused(ran[f"bad-value-{command}"].result, "PARLEY_EVENT_DIALECT", "'kebab'", "camel")
    assert "validation error" not in line


@case("every-bad-value")
def _(d: Path, _: int) -> Case:
    return Case(
        ["serve"], env_for(d, PARLEY_PORT="eighty", PARLEY_LOG_LEVEL="verbose", PARLEY_JWT_SECRET=SECRET)
    )


def test_every_bad_value_is_named_on_the_one_line(ran: dict[str, Ran]) -> None:
    refused(ran["every-bad-value"].result, "PARLEY_PORT='eighty'", "integer", "PARLEY_LOG_LEVEL='verbose'")


@case("secret-not-echoed")
def _(d: Path, _: int) -> Case:
    env = env_for(d, PARLEY_DATABASE_URL="", PARLEY_REDIS_URL="", PARLEY_JWT_SECRET=SECRET)
    env["PARLEY_MAX_TURN_S"] = "-1"
    return Case(["serve"], env)


def test_a_secret_value_is_never_echoed(ran: dict[str, Ran]) -> None:
    line = refused(ran["secret-not-echoed"].result, "PARLEY_MAX_TURN_S")
    assert SECRET not in line


@case("hostile-value")
def _(d: Path, _: int) -> Case:
    return Case(["migrate"], env_for(d, PARLEY_EVENT_DIALECT="camel\nparley: forged" + "x" * 10_000))


def test_a_hostile_value_stays_on_one_line(ran: dict[str, Ran]) -> None:
    line = refused(ran["hostile-value"].result, "PARLEY_EVENT_DIALECT")
    assert len(line) < 600


# -- the database -------------------------------------------------------------------------------------

REFUSED_URL = "postgresql://parley:hunter2@127.0.0.1:{port}/parley"


def _refused_database(d: Path, port: int, command: list[str]) -> Case:
    url = REFUSED_URL.format(port=port)
    return Case(command, env_for(d, PARLEY_DATABASE_URL=url, PARLEY_JWT_SECRET=SECRET))


for command in (["serve"], ["migrate"]):
    cases(f"refused-database-{command[0]}", _refused_database, command=command)


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_refused_database_names_host_port_and_cause(ran: dict[str, Ran], command: str) -> None:
    done = ran[f"refused-database-{command}"]
    line = refused(done.result, "PARLEY_DATABASE_URL", f"127.0.0.1:{done.port}", "refused")
    assert "hunter2" not in line


@case("silent-database", silent=True)
def _(d: Path, port: int) -> Case:
    url = f"postgresql://parley@127.0.0.1:{port}/parley"
    env = env_for(
        d, PARLEY_DATABASE_URL=url, PARLEY_JWT_SECRET=SECRET, PARLEY_DATABASE_CONNECT_TIMEOUT_S="0.5"
    )
    return Case(["serve"], env)


def test_a_silent_database_times_out_by_name(ran: dict[str, Ran]) -> None:
    done = ran["silent-database"]
    refused(done.result, f"127.0.0.1:{done.port}", "no answer within 0.5s")


@case("database-dns")
def _(d: Path, _: int) -> Case:
    url = "postgresql://parley@db.parley-test.invalid:6543/parley"
    return Case(["migrate"], env_for(d, PARLEY_DATABASE_URL=url, PARLEY_JWT_SECRET=SECRET))


def test_a_database_host_that_does_not_resolve_says_dns(ran: dict[str, Ran]) -> None:
    refused(ran["database-dns"].result, "db.parley-test.invalid:6543", "DNS")


def test_a_refused_login_says_authentication(tmp_path: Path, postgres_url: str) -> None:
    """Not among the cases started together: it needs the test run's PostgreSQL (skipped without it)."""
    server = make_url(postgres_url)
    url = server.set(username="parley_no_such_role", password=None).render_as_string(hide_password=False)
    env = env_for(tmp_path, PARLEY_DATABASE_URL=url, PARLEY_JWT_SECRET=SECRET)
    refused(parley(["migrate"], env, tmp_path), f"{server.host}:{server.port}", "authentication failed")


UNUSABLE_URLS = [
    ("mysql://parley@127.0.0.1/parley", "unsupported scheme 'mysql'"),
    ("postgresql+psycopg2://parley@127.0.0.1/parley", "unsupported driver"),
    ("not a url", "is not a database URL"),
]


def _unusable_url(d: Path, _: int, url: str) -> Case:
    return Case(["serve"], env_for(d, PARLEY_DATABASE_URL=url, PARLEY_JWT_SECRET=SECRET))


for number, (url, _named) in enumerate(UNUSABLE_URLS):
    cases(f"unusable-url-{number}", _unusable_url, url=url)


@pytest.mark.parametrize(("url", "named"), UNUSABLE_URLS)
def test_an_unusable_database_url_is_refused(ran: dict[str, Ran], url: str, named: str) -> None:
    number = [u for u, _ in UNUSABLE_URLS].index(url)
    refused(ran[f"unusable-url-{number}"].result, "PARLEY_DATABASE_URL", named)


@case("data-dir-blocked")
def _(d: Path, _: int) -> Case:
    blocker = d / "a-file"
    blocker.write_text("")
    return Case(["migrate"], cli_env(blocker / "data", PARLEY_JWT_SECRET=SECRET))


def test_a_data_dir_that_cannot_be_made_is_named(ran: dict[str, Ran]) -> None:
    done = ran["data-dir-blocked"]
    refused(done.result, "PARLEY_DATA_DIR", str(done.path / "a-file"))


# -- the JWT secret -----------------------------------------------------------------------------------


@case("serve-no-secret")
def _(d: Path, _: int) -> Case:
    return Case(["serve"], env_for(d))


def test_serve_without_a_secret_is_refused(ran: dict[str, Ran]) -> None:
    done = ran["serve-no-secret"]
    refused(done.result, "PARLEY_JWT_SECRET is not set", "--dev")
    assert not (done.path / "data" / "jwt_secret").exists()


@case("token-no-secret")
def _(d: Path, _: int) -> Case:
    return Case(["token", "--customer-id", "1"], env_for(d))


def test_token_without_a_secret_refuses_instead_of_inventing_one(ran: dict[str, Ran]) -> None:
    done = ran["token-no-secret"]
    refused(done.result, "PARLEY_JWT_SECRET is not set", "--dev")
    assert done.result.stdout == ""
    assert not (done.path / "data" / "jwt_secret").exists()


@case("token-public-key-only")
def _(d: Path, _: int) -> Case:
    env = env_for(d, PARLEY_JWT_PUBLIC_KEY="-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----")
    return Case(["token", "--customer-id", "1"], env)


def test_token_with_only_a_public_key_cannot_sign(ran: dict[str, Ran]) -> None:
    refused(ran["token-public-key-only"].result, "PARLEY_JWT_SECRET is not set")


def _short_secret(d: Path, _: int, command: list[str]) -> Case:
    return Case(command, env_for(d, PARLEY_JWT_SECRET="s" * 31))


for command in COMMANDS[:2]:
    cases(f"short-secret-{command[0]}", _short_secret, command=command)


@pytest.mark.parametrize("command", COMMAND_IDS[:2])
def test_a_short_secret_is_refused(ran: dict[str, Ran], command: str) -> None:
    refused(ran[f"short-secret-{command}"].result, "PARLEY_JWT_SECRET is 31 bytes", "at least 32")


@case("dev-short-secret")
def _(d: Path, _: int) -> Case:
    return Case(["token", "--dev", "--customer-id", "1"], env_for(d, PARLEY_JWT_SECRET="short"))


def test_dev_mode_takes_a_short_secret(ran: dict[str, Ran]) -> None:
    result = ran["dev-short-secret"].result
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("eyJ")


@case("public-key-file-missing")
def _(d: Path, _: int) -> Case:
    return Case(["serve"], env_for(d, PARLEY_JWT_PUBLIC_KEY=str(d / "missing.pem")))


def test_an_unreadable_public_key_file_is_named(ran: dict[str, Ran]) -> None:
    refused(ran["public-key-file-missing"].result, "PARLEY_JWT_PUBLIC_KEY", "missing.pem")


# -- the models and MCP files -------------------------------------------------------------------------

BAD_MODELS = {
    "syntax": ("[providers.local\nkind = 'openai'", "cannot read the models file"),
    "value": (
        "[providers.local]\nkind = 'nope'\nbase_url = 'http://127.0.0.1:1/v1'\n",
        "providers.local.kind",
    ),
    "missing": ("[providers.local]\nkind = 'openai'\n", "providers.local needs base_url"),
}


def _models_case(d: Path, _: int, text: str) -> Case:
    models = d / "models.toml"
    models.write_text(text)
    return Case(["serve"], env_for(d, PARLEY_MODELS_FILE=str(models), PARLEY_JWT_SECRET=SECRET))


for kind, (text, _named) in BAD_MODELS.items():
    cases(f"bad-models-{kind}", _models_case, text=text)


@pytest.mark.parametrize("kind", list(BAD_MODELS))
def test_a_bad_models_file_is_named(ran: dict[str, Ran], kind: str) -> None:
    done = ran[f"bad-models-{kind}"]
    refused(done.result, "PARLEY_MODELS_FILE", str(done.path / "models.toml"), BAD_MODELS[kind][1])


@case("models-file-missing")
def _(d: Path, _: int) -> Case:
    return Case(["serve"], env_for(d, PARLEY_MODELS_FILE=str(d / "nowhere.toml"), PARLEY_JWT_SECRET=SECRET))


def test_a_missing_models_file_is_named(ran: dict[str, Ran]) -> None:
    refused(ran["models-file-missing"].result, "PARLEY_MODELS_FILE", "nowhere.toml")


BAD_MCP = {
    "syntax": ("[mcp_servers.files\ncommand = 'x'", "cannot read the MCP file"),
    "value": ("[mcp_servers.files]\nurl = 'ftp://example'\n", "mcp_servers.files"),
}


def _mcp_case(d: Path, _: int, text: str) -> Case:
    mcp = d / "mcp.toml"
    mcp.write_text(text)
    return Case(["serve"], env_for(d, PARLEY_MCP_FILE=str(mcp), PARLEY_JWT_SECRET=SECRET))


for kind, (text, _named) in BAD_MCP.items():
    cases(f"bad-mcp-{kind}", _mcp_case, text=text)


@pytest.mark.parametrize("kind", list(BAD_MCP))
def test_a_bad_mcp_file_is_named(ran: dict[str, Ran], kind: str) -> None:
    done = ran[f"bad-mcp-{kind}"]
    refused(done.result, "PARLEY_MCP_FILE", str(done.path / "mcp.toml"), BAD_MCP[kind][1])


# -- asking for the traceback -------------------------------------------------------------------------

DEBUG_HOWS = ["--debug", "PARLEY_LOG_LEVEL=debug"]


def _debug_case(d: Path, port: int, how: str) -> Case:
    env = env_for(d, PARLEY_DATABASE_URL=f"postgresql://p@127.0.0.1:{port}/p", PARLEY_JWT_SECRET=SECRET)
    args = ["migrate"]
    if how == "--debug":
        args.append(how)
    else:
        env["PARLEY_LOG_LEVEL"] = "debug"
    return Case(args, env)


for number, how in enumerate(DEBUG_HOWS):
    cases(f"debug-{number}", _debug_case, how=how)


@pytest.mark.parametrize(("number", "how"), list(enumerate(DEBUG_HOWS)), ids=DEBUG_HOWS)
def test_debug_adds_the_traceback(ran: dict[str, Ran], number: int, how: str) -> None:
    done = ran[f"debug-{number}"]
    result = done.result
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"parley: PARLEY_DATABASE_URL: cannot use PostgreSQL at 127.0.0.1:{done.port}"
    )


# -- --version ----------------------------------------------------------------------------------------


@case("version")
def _(d: Path, _: int) -> Case:
    return Case(["--version"], env_for(d))


def test_version_comes_from_the_package(ran: dict[str, Ran]) -> None:
    from importlib.metadata import version

    result = ran["version"].result
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"parley {version('parley')}"


@case("redis-scheme")
def _(d: Path, _: int) -> Case:
    return Case(
        ["serve"], env_for(d, PARLEY_REDIS_URL="http://cache.internal:6379", PARLEY_JWT_SECRET=SECRET)
    )


def test_a_redis_url_of_another_scheme_is_named(ran: dict[str, Ran]) -> None:
    refused(ran["redis-scheme"].result, "PARLEY_REDIS_URL", "redis://")


@case("port-held", silent=True)
def _(d: Path, port: int) -> Case:
    return Case(["serve"], env_for(d, PARLEY_PORT=str(port), PARLEY_JWT_SECRET=SECRET))


def test_a_port_another_process_holds_is_named(ran: dict[str, Ran]) -> None:
    done = ran["port-held"]
    refused(done.result, f"cannot listen on 127.0.0.1:{done.port}", "address already in use")


@case("dev-secret-blocked")
def _(d: Path, _: int) -> Case:
    blocker = d / "a-file"
    blocker.write_text("")
    return Case(["token", "--dev", "--customer-id", "1"], cli_env(blocker / "data"))


def test_a_dev_secret_that_cannot_be_kept_names_the_data_dir(ran: dict[str, Ran]) -> None:
    refused(ran["dev-secret-blocked"].result, "PARLEY_DATA_DIR", "dev secret")
