"""Configuration checked before a command runs: each mistake is one ``ConfigError`` sentence for an operator.

The sentence names the variable or file, what is wrong with its value and, for a database, the host and
port and why it cannot be reached. ``parley`` prints it as one line on stderr and exits 2 (parley/cli.py).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from pydantic import ValidationError
from redis.connection import parse_url
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from parley.config import Settings

MIN_SECRET_BYTES = 32
SHOWN_VALUE_CHARS = 60  # of a refused value, in the message: enough to recognise it
DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}
SECRET_FIELDS = {"jwt_secret", "database_url", "redis_url"}  # never echoed: they may hold passwords
_AUTH_ERRORS = ("InvalidPasswordError", "InvalidAuthorizationSpecificationError")


class ConfigError(Exception):
    """A configuration mistake, said in one line that names the variable or file."""


def load_settings(**updates: Any) -> Settings:
    """``Settings()`` from the environment and ``.env``, with ``updates`` laid over; a bad value is a
    ``ConfigError`` naming its ``PARLEY_*`` variable."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError("; ".join(_problem(error) for error in exc.errors())) from exc
    return settings.model_copy(update=updates) if updates else settings


def _problem(error: Any) -> str:
    field = str(error["loc"][0]) if error["loc"] else "?"
    name = f"PARLEY_{field.upper()}"
    message = str(error["msg"])
    given = error.get("input")
    if field in SECRET_FIELDS or not isinstance(given, str):
        return f"{name}: {message}"
    return f"{name}={shown(given)}: {message}"


def shown(value: str) -> str:
    """A value quoted for a one-line message: escaped, and cut short."""
    if len(value) > SHOWN_VALUE_CHARS:
        value = value[:SHOWN_VALUE_CHARS] + "…"
    return repr(value)


def check_secret(settings: Settings, *, signing: bool = False) -> None:
    """Outside dev mode: a JWT key must be configured, and an HS256 secret must be at least 32 bytes.
    ``signing``: the HS256 secret itself is needed (``parley token``); a public key alone cannot sign."""
    if settings.dev:
        if settings.jwt_secret is None:
            try:
                settings.ensure_dev_secret()
            except OSError as exc:
                where = settings.data_dir
                raise ConfigError(f"PARLEY_DATA_DIR: cannot keep the dev secret in {where}: {exc}") from exc
        return
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret is not None else None
    if secret is None and (signing or settings.jwt_public_key is None):
        hint = "the secret the server has" if signing else "a random secret of at least 32 bytes"
        raise ConfigError(
            f"PARLEY_JWT_SECRET is not set: set it to {hint}"
            + ("" if signing else " (or PARLEY_JWT_PUBLIC_KEY)")
            + ", or use --dev for the dev secret in PARLEY_DATA_DIR"
        )
    if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"PARLEY_JWT_SECRET is {len(secret.encode())} bytes, too short: it must be at least "
            f"{MIN_SECRET_BYTES} (python -c 'import secrets; print(secrets.token_urlsafe(48))' makes one)"
        )


def check_files(settings: Settings) -> None:
    """The models file, the MCP file and an RS256 key file exist and parse."""
    from parley.providers.registry import load_models_file
    from parley.tools import load_mcp_config

    try:
        load_models_file(settings.models_file)
    except ValueError as exc:
        raise ConfigError(f"PARLEY_MODELS_FILE: {one_line(exc)}") from exc
    if settings.mcp_file is not None:
        try:
            load_mcp_config(settings.mcp_file)
        except ValueError as exc:
            raise ConfigError(f"PARLEY_MCP_FILE: {one_line(exc)}") from exc
    try:
        settings.public_key_pem()
    except (OSError, UnicodeDecodeError) as exc:
        where = settings.jwt_public_key
        raise ConfigError(f"PARLEY_JWT_PUBLIC_KEY: cannot read the key file {where}: {exc}") from exc


def check_listen(settings: Settings) -> None:
    """The host and port can be listened on (nothing else holds the port, the address is this host's)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((settings.host, settings.port))
    except OSError as exc:
        cause = exc.strerror or str(exc)
        raise ConfigError(
            f"PARLEY_HOST/PARLEY_PORT (--host/--port): cannot listen on {settings.host}:{settings.port}: "
            f"{cause.lower() if exc.strerror else cause}"
        ) from exc


def check_redis(settings: Settings) -> None:
    """A ``PARLEY_REDIS_URL`` Redis can take (reaching it is not required: Parley starts without it)."""
    if not settings.redis_url:
        return
    try:
        parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ConfigError(f"PARLEY_REDIS_URL: {one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def database_url(settings: Settings) -> URL:
    """The database URL, parsed; one Parley cannot use (unparsable, another database, a sync driver) is a
    ``ConfigError``."""
    resolved = settings.resolved_database_url
    try:
        url = make_url(resolved)
    except ArgumentError as exc:
        raise ConfigError(
            "PARLEY_DATABASE_URL is not a database URL: expected postgresql://user@host:port/db "
            "or sqlite:///path"
        ) from exc
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend not in DRIVERS:
        raise ConfigError(
            f"PARLEY_DATABASE_URL: unsupported scheme {url.drivername!r}: Parley speaks PostgreSQL "
            "(postgresql://) and SQLite (sqlite:///)"
        )
    if driver != DRIVERS[backend]:
        raise ConfigError(
            f"PARLEY_DATABASE_URL: unsupported driver {url.drivername!r}: use {backend}:// "
            f"(Parley adds {backend}+{DRIVERS[backend]})"
        )
    return url


async def check_database(settings: Settings) -> None:
    """Connect once and run ``SELECT 1``; a database that cannot be used is a ``ConfigError`` saying
    where it is and why."""
    url = database_url(settings)
    timeout_s = settings.database_connect_timeout_s
    if url.get_backend_name() == "sqlite":
        await _check_sqlite(settings, url)
        return
    engine = create_async_engine(
        url, poolclass=NullPool, hide_parameters=True, connect_args={"timeout": timeout_s}
    )
    try:
        async with asyncio.timeout(timeout_s + 1), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        where = f"{url.host or 'localhost'}:{url.port or 5432}"
        raise ConfigError(
            f"PARLEY_DATABASE_URL: cannot use PostgreSQL at {where}: {_database_cause(exc, timeout_s)}"
        ) from exc
    finally:
        await engine.dispose()


async def _check_sqlite(settings: Settings, url: URL) -> None:
    from parley.store.db import create_engine

    variable = "PARLEY_DATABASE_URL" if settings.database_url else "PARLEY_DATA_DIR"
    path = url.database or ":memory:"
    try:
        engine = create_engine(url.render_as_string(hide_password=False))
    except OSError as exc:
        raise ConfigError(
            f"{variable}: cannot create the directory of the SQLite file {path}: {exc}"
        ) from exc
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        cause = getattr(exc, "orig", None) or exc
        raise ConfigError(f"{variable}: cannot open the SQLite file {path}: {one_line(cause)}") from exc
    finally:
        await engine.dispose()


def _database_cause(exc: BaseException, timeout_s: float) -> str:
    """Why the database cannot be used: refused, timeout, DNS, authentication, or its own words."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return "the host name does not resolve (DNS)"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, TimeoutError):
            return f"no answer within {timeout_s:g}s (PARLEY_DATABASE_CONNECT_TIMEOUT_S)"
        if type(current).__name__ in _AUTH_ERRORS:
            return f"authentication failed ({one_line(current)})"
        if type(current).__module__.startswith("asyncpg"):
            return one_line(current)
        current = current.__cause__ or current.__context__
    orig = getattr(exc, "orig", None)
    return one_line(orig if orig is not None else exc)
