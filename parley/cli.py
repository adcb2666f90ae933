"""The ``parley`` command: ``serve``, ``token`` and ``migrate``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from parley.auth import settings_token
from parley.config import Settings
from parley.store.db import create_engine, migrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parley", description="Parley chat backend")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument("--dev", action="store_true", help="dev mode: generated secret, demo model stand-in")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the one port (default 1; more need PARLEY_REDIS_URL and PostgreSQL)",
    )

    token = commands.add_parser("token", help="print a signed token for a customer")
    token.add_argument("--customer-id", required=True, help="the customer the token speaks for")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds until it expires (default 86400)")

    commands.add_parser("migrate", help="apply the database migrations")

    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "serve":
        return _serve(settings, args)
    if args.command == "token":
        try:
            print(settings_token(settings, args.customer_id, args.ttl))
        except ValueError as exc:
            print(f"parley: {exc}", file=sys.stderr)
            return 2
        return 0
    asyncio.run(_migrate(settings))
    print(f"migrated {settings.resolved_database_url.split('@')[-1]}")
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from parley.api.web import DEV_CUSTOMER, DEV_TOKEN_TTL_S
    from parley.app import create_app
    from parley.server import ParleyServer
    from parley.workers import refusal, run_workers

    updates = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    if args.dev:
        updates["dev"] = True
    settings = settings.model_copy(update=updates)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    refused = refusal(settings, args.workers)
    if refused is not None:
        print(f"parley: {refused}", file=sys.stderr)
        return 2
    try:
        app = create_app(settings)  # also when the workers build their own: a bad setting fails here, once
    except ValueError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2
    if settings.dev:
        token = settings_token(settings, DEV_CUSTOMER, DEV_TOKEN_TTL_S)
        base = f"{settings.host}:{settings.port}"
        print(
            f"\nParley dev server on http://{base} (database: {settings.resolved_database_url})\n"
            f"Chat in the browser: http://{base}/ (it signs itself in)\n"
            f"A token for customer 1, valid 7 days:\n\n  {token}\n\n"
            f"Try it:  JWT_TOKEN={token} python tests/manual/test_session_persistence_manual.py\n",
            flush=True,
        )
    if args.workers > 1:
        return run_workers(settings, args.workers, updates)
    ParleyServer(app, settings).run()
    return 0


async def _migrate(settings: Settings) -> None:
    engine = create_engine(settings.resolved_database_url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
