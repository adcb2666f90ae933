"""Alembic environment: runs on the connection Parley hands it, or opens its own from the URL."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from parley.store.tables import Base

target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_own_engine() -> None:
    from parley.store.db import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    async with engine.begin() as conn:
        await conn.run_sync(run_with)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
elif (given := context.config.attributes.get("connection")) is not None:
    run_with(given)
else:
    asyncio.run(run_own_engine())
