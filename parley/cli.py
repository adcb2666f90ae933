"""The ``parley`` command: ``serve``, ``token``, ``migrate`` and ``chat`` (parley/chat.py).

A configuration mistake ends any of them with exit code 2 and one line on stderr, ``parley: …``, naming the
variable or file (parley/preflight.py); ``--debug`` or ``PARLEY_LOG_LEVEL=debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

import parley.chat as chat
from parley import __version__, logs
from parley.auth import DEV_CUSTOMER, DEV_TOKEN_TTL_S, settings_token
from parley.config import Settings
from parley.preflight import (
    ConfigError,
    check_database,
    check_files,
    check_listen,
    check_redis,
    check_secret,
    database_url,
    load_settings,
    one_line,
)
from parley.store.db import Migration, create_engine, migrate

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
MANUAL_CHECK_IN_REPO = "tests/manual/test_session_persistence_manual.py"
MANUAL_CHECK = Path(__file__).resolve().parent.parent / MANUAL_CHECK_IN_REPO  # in a checkout, not a wheel


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as exc:
        if args.debug or os.environ.get("PARLEY_LOG_LEVEL", "").lower() == "debug":
            traceback.print_exception(exc)
        print(f"parley: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="a traceback with a refusal"
    )
    parser = argparse.ArgumentParser(prog="parley", description="Parley chat backend", parents=[common])
    parser.set_defaults(debug=False)
    parser.add_argument("--version", action="version", version=f"parley {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server", parents=[common])
    serve.add_argument("--host", help=f"interface to bind (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, help=f"port to bind (default {DEFAULT_PORT})")
    serve.add_argument("--dev", action="store_true", help="dev mode: generated secret, demo model stand-in")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the one port (default 1; more need PARLEY_REDIS_URL and PostgreSQL)",
    )

    token = commands.add_parser("token", help="print a signed token for a customer", parents=[common])
    token.add_argument("--customer-id", required=True, help="the customer the token speaks for")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds until it expires (default 86400)")
    token.add_argument("--dev", action="store_true", help="sign with the dev secret in PARLEY_DATA_DIR")

    commands.add_parser("migrate", help="apply the database migrations", parents=[common])
    chat.add_parser(commands, common)
    return parser


def _run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.command == "serve":
        return _serve(settings, args)
    if args.command == "chat":
        return chat.run(settings, args)
    logs.configure(settings)
    if args.command == "token":
        print(_token_command(settings, args))
        return 0
    _migrate_command(settings)
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from parley.workers import metrics_directory, refusal

    updates = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    if args.dev:
        updates["dev"] = True
    settings = settings.model_copy(update=updates)
    log_config = logs.configure(settings)
    refused = refusal(settings, args.workers)
    if refused is not None:
        raise ConfigError(refused)
    check_listen(settings)
    check_secret(settings)
    check_files(settings)
    check_redis(settings)
    asyncio.run(check_database(settings))
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(metrics_directory(settings.metrics, args.workers))
        except OSError as exc:
            raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR: cannot use it: {one_line(exc)}") from exc
        return _serve_app(settings, args, updates, log_config)


def _serve_app(
    settings: Settings, args: argparse.Namespace, updates: dict[str, Any], log_config: dict[str, Any]
) -> int:
    from parley.app import create_app  # the whole server: imported once the settings are known to be good
    from parley.server import ParleyServer
    from parley.workers import run_workers

    try:
        app = create_app(settings)  # also when the workers build their own: a bad setting fails here, once
    except (ValueError, OSError) as exc:
        raise ConfigError(one_line(exc)) from exc
    if settings.dev:
        print(dev_banner(settings, settings_token(settings, DEV_CUSTOMER, DEV_TOKEN_TTL_S)), flush=True)
    if args.workers > 1:
        return run_workers(settings, args.workers, updates)
    ParleyServer(app, settings, log_config=log_config).run()
    return 0


def dev_banner(settings: Settings, token: str) -> str:
    """What ``serve --dev`` prints: where it runs, a token, and a line to try it with this venv's Python."""
    base = f"{settings.host}:{settings.port}"
    shown_db = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    target = ""
    if (settings.host, settings.port) != (DEFAULT_HOST, DEFAULT_PORT):
        target = f"BACKEND_WS_URL=ws://{_url_host(settings.host)}:{settings.port}/chat/ws "
    python = _shown_path(Path(sys.executable))
    script = _shown_path(MANUAL_CHECK) if MANUAL_CHECK.exists() else MANUAL_CHECK_IN_REPO
    return (
        f"\nParley dev server on http://{base} (database: {shown_db})\n"
        f"Chat in the browser: http://{_url_host(settings.host)}:{settings.port}/ (it signs itself in)\n"
        f"A token for customer 1, valid 7 days:\n\n  {token}\n\n"
        f"Try it:  {target}JWT_TOKEN={token} {python} {script}\n"
    )


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):  # bound everywhere: this machine answers on the loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _shown_path(path: Path) -> str:
    """The interpreter as a person would type it here: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _token_command(settings: Settings, args: argparse.Namespace) -> str:
    if args.dev:
        settings = settings.model_copy(update={"dev": True})
    check_secret(settings, signing=True)
    try:
        return settings_token(settings, args.customer_id, args.ttl)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _migrate_command(settings: Settings) -> None:
    shown_db = database_url(settings).render_as_string(hide_password=True)
    asyncio.run(check_database(settings))
    applied = asyncio.run(_migrate(settings))
    for migration in applied:
        print(f"applied {migration.revision}: {migration.title}")
    if applied:
        print(f"migrated {shown_db} to {applied[-1].revision}")
    else:
        print(f"{shown_db} is up to date: no migrations were due")


async def _migrate(settings: Settings) -> list[Migration]:
    engine = create_engine(settings.resolved_database_url)
    try:
        return await migrate(engine)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
