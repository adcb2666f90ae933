"""The bench's own PostgreSQL databases (created per run, dropped after it) and what Parley stored.

Reads go straight to the database after the server has stopped: SQLite through the standard library,
PostgreSQL through asyncpg (a Parley dependency). Nothing here writes to a database it did not create.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

ADMIN_DSN = os.environ.get("PARLEY_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
CONNECT_TIMEOUT_S = 5
BATCH = 500

ASSISTANT_STATUSES = "SELECT status, COUNT(*) FROM chat_messages WHERE role = 'assistant' GROUP BY status"


@dataclass(frozen=True)
class PgDatabase:
    name: str
    admin_dsn: str

    @property
    def url(self) -> str:
        """The plain ``postgresql://`` URL Parley is given (it picks asyncpg itself)."""
        return f"{self.admin_dsn.rsplit('/', 1)[0]}/{self.name}"


async def _admin(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def postgres_version(admin_dsn: str = ADMIN_DSN) -> str:
    """``SHOW server_version``; raises when the server is not reachable."""
    return str(await _admin(admin_dsn, "SHOW server_version"))


async def create_database(admin_dsn: str = ADMIN_DSN) -> PgDatabase:
    database = PgDatabase(f"parley_bench_{uuid.uuid4().hex[:10]}", admin_dsn)
    await _admin(admin_dsn, f'CREATE DATABASE "{database.name}"')
    return database


async def drop_database(database: PgDatabase) -> None:
    await _admin(database.admin_dsn, f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')


@dataclass
class Stored:
    """What Parley stored: answer rows by status, and the answers of some request ids."""

    statuses: Counter[str]
    answers: dict[str, tuple[str, str]]  # request_id -> (status, content)


def _batches(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start : start + BATCH]


def stored_sqlite(path: Path, request_ids: list[str]) -> Stored:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        statuses = Counter({str(s): int(n) for s, n in conn.execute(ASSISTANT_STATUSES)})
        answers: dict[str, tuple[str, str]] = {}
        for batch in _batches(request_ids):
            marks = ",".join("?" * len(batch))
            query = (
                "SELECT request_id, status, content FROM chat_messages "
                f"WHERE role = 'assistant' AND request_id IN ({marks})"
            )
            for rid, status, content in conn.execute(query, batch):
                answers[str(rid)] = (str(status), str(content))
        return Stored(statuses, answers)
    finally:
        conn.close()


async def stored_postgres(database: PgDatabase, request_ids: list[str]) -> Stored:
    conn = await asyncpg.connect(database.url, timeout=CONNECT_TIMEOUT_S)
    try:
        statuses = Counter({str(r[0]): int(r[1]) for r in await conn.fetch(ASSISTANT_STATUSES)})
        rows = await conn.fetch(
            "SELECT request_id, status, content FROM chat_messages "
            "WHERE role = 'assistant' AND request_id = ANY($1::text[])",
            request_ids,
        )
        return Stored(statuses, {str(r[0]): (str(r[1]), str(r[2])) for r in rows})
    finally:
        await conn.close()


def check_cancelled(stored: Stored, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each cancelled turn's answer is stored, status ``cancelled``, exactly the deltas the client got."""
    matched, problems = 0, list[str]()
    for record in records:
        found = stored.answers.get(record["request_id"])
        if found == ("cancelled", record["text"]):
            matched += 1
        elif len(problems) < 5:
            got = "missing" if found is None else f"status {found[0]}, {len(found[1])} chars"
            problems.append(
                f"{record['request_id']}: expected cancelled, {len(record['text'])} chars; got {got}"
            )
    return {"checked": len(records), "matched": matched, "problems": problems}
