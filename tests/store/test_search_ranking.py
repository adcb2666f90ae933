"""SQLite search ranks by BM25 over each customer's own messages (parley/store/bm25.py, migration 0005).

- A customer alone in the database gets exactly FTS5's ``bm25()`` scores, in the same order: the ranking
  is FTS5's, only its statistics are the customer's.
- Another customer's messages change none of a customer's scores.
- The statistics the index triggers keep (documents and tokens per customer, each row's length) match a
  recount after every kind of change, and migration 0005 fills them in for messages stored before it.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.store.bm25 import UNICODE61_FOLDS, prefix_range
from parley.store.db import create_engine, migrate
from parley.store.search import Search, fts5_query, terms_of
from parley.store.tables import utcnow
from tests.store.test_history_migration import MESSAGES, SESSIONS, migrate_to

TEXTS = [
    "Parsnip soup: parsnip, more parsnip.",
    "A long note about the garden, the weather, the neighbours and, once, a parsnip.",
    "Parsley and parsnips, parsley again",
    "Nothing to see here",
    "the the the garden",
    "Λόγος και λόγος: a Greek word, twice",
    "Ünïcödé Über alles, über",
    "short",
    "",
]
QUERIES = ["parsnip", "pars", "the garden", "pars garden", "λόγος", "über", "nothing here", "zzz"]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    made = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'rank.db'}")
    await migrate(made)
    try:
        yield made
    finally:
        await made.dispose()


async def write(
    engine: AsyncEngine, customer: str, texts: list[str], status: str = "completed"
) -> list[uuid.UUID]:
    """One session of ``customer`` holding a message per text; their ids."""
    session_id, now = uuid.uuid4(), utcnow()
    ids = [uuid.uuid4() for _ in texts]
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(SESSIONS).values(
                id=session_id, customer_id=customer, title="t", created_at=now, updated_at=now
            )
        )
        for n, (message_id, content) in enumerate(zip(ids, texts, strict=True)):
            at = now + timedelta(milliseconds=n)
            await conn.execute(
                sa.insert(MESSAGES).values(
                    id=message_id,
                    session_id=session_id,
                    parent_id=None,
                    customer_id=customer,
                    role="user",
                    content=content,
                    status=status,
                    created_at=at,
                    updated_at=at,
                )
            )
    return ids


async def fts5_bm25(engine: AsyncEngine, query: str) -> list[tuple[uuid.UUID, float]]:
    """FTS5's own ranking of every indexed message (all customers together), best first."""
    statement = sa.text(
        "SELECT m.id, -bm25(chat_messages_fts) AS score FROM chat_messages_fts"
        " JOIN chat_messages_fts_keys k ON k.id = chat_messages_fts.rowid"
        " JOIN chat_messages m ON m.id = k.message_id"
        " WHERE chat_messages_fts MATCH :query ORDER BY score DESC, m.created_at DESC, m.id"
    ).columns(id=sa.Uuid, score=sa.Float)
    async with engine.connect() as conn:
        rows = await conn.execute(statement, {"query": fts5_query(terms_of(query))})
        return [(row.id, row.score) for row in rows]


async def ranked(search: Search, customer: str, query: str) -> list[tuple[uuid.UUID, float]]:
    return [(hit.message_id, hit.score) for hit in await search.messages(customer, query, 50, 0)]


async def test_a_lone_customer_gets_fts5s_own_bm25(engine: AsyncEngine) -> None:
    await write(engine, "alone", TEXTS)
    await write(engine, "alone", TEXTS[:3] * 2)
    search = Search(engine)
    for query in QUERIES:
        expected = await fts5_bm25(engine, query)
        got = await ranked(search, "alone", query)
        assert [i for i, _ in got] == [i for i, _ in expected], query
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], rel=1e-12), query
    first, second = (
        await search.messages("alone", "parsnip", 2, 0),
        await search.messages("alone", "parsnip", 2, 2),
    )
    assert [(h.message_id, h.score) for h in first + second] == (await ranked(search, "alone", "parsnip"))[:4]


def test_query_terms_fold_as_fts5_folds() -> None:
    """The vocabulary is read with the term as FTS5's tokenizer folds it, also where ``str.lower`` differs."""
    words = [f"x{chr(c)}y" for c in UNICODE61_FOLDS] + ["parsnip", "über", "λόγος"]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(c, tokenize = 'unicode61 remove_diacritics 0')")
    db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    db.executemany("INSERT INTO t (rowid, c) VALUES (?, ?)", enumerate(words, 1))
    folded = dict(db.execute("SELECT doc, term FROM v"))
    assert [prefix_range(terms_of(w)[0])[0] for w in words] == [folded[n] for n in range(1, len(words) + 1)]
    assert prefix_range("abc") == ("abc", "abd")


async def test_other_customers_change_no_score(engine: AsyncEngine) -> None:
    await write(engine, "mine", TEXTS)
    search = Search(engine)
    before = {query: await ranked(search, "mine", query) for query in QUERIES}
    await write(engine, "theirs", ["parsnip"] * 12 + ["the garden " * 40, "über λόγος pars"] + TEXTS)
    assert {query: await ranked(search, "mine", query) for query in QUERIES} == before
    assert await fts5_bm25(engine, "parsnip") != before["parsnip"]  # FTS5's own scores moved


async def statistics(engine: AsyncEngine) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """What the triggers keep per customer (documents, tokens), and a recount: one row per indexed
    message, its tokens as FTS5's vocabulary lists them (each token is one instance)."""
    async with engine.connect() as conn:
        kept = await conn.execute(
            sa.text("SELECT customer_id, documents, tokens FROM chat_messages_fts_stats")
        )
        recount = await conn.execute(
            sa.text(
                "SELECT m.customer_id, count(*), sum(coalesce(i.n, 0)) FROM chat_messages m"
                " JOIN chat_messages_fts_keys k ON k.message_id = m.id"
                " LEFT JOIN (SELECT doc, count(*) AS n FROM chat_messages_fts_instances GROUP BY doc) i"
                " ON i.doc = k.id GROUP BY m.customer_id"
            )
        )
        lengths = await conn.scalar(
            sa.text(
                "SELECT count(*) FROM chat_messages_fts_keys k"
                " LEFT JOIN (SELECT doc, count(*) AS n FROM chat_messages_fts_instances GROUP BY doc) i"
                " ON i.doc = k.id WHERE k.tokens IS NOT coalesce(i.n, 0)"
            )
        )
    assert lengths == 0, "a row's stored length is not FTS5's"
    return {c: (d, t) for c, d, t in kept}, {c: (d, t) for c, d, t in recount}


async def change(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text(sql), params)


async def test_the_statistics_follow_every_change(engine: AsyncEngine) -> None:
    long = " ".join(f"w{n}" for n in range(20_000))  # a 3-byte length in FTS5's docsize
    mine = await write(engine, "a", [*TEXTS, long])
    await write(engine, "b", ["one two", "three"])
    streaming = await write(engine, "a", ["still streaming"], status="streaming")
    kept, recount = await statistics(engine)
    assert kept == recount and kept["a"][0] == len(TEXTS) + 1 and kept["b"] == (2, 3)

    await change(engine, "UPDATE chat_messages SET content = 'a b c d e f' WHERE id = :id", id=mine[0].hex)
    await change(engine, "UPDATE chat_messages SET status = 'completed' WHERE id = :id", id=streaming[0].hex)
    await change(engine, "DELETE FROM chat_messages WHERE id = :id", id=mine[1].hex)
    kept, recount = await statistics(engine)
    assert kept == recount and kept["a"][0] == len(TEXTS) + 1

    await change(engine, "DELETE FROM chat_sessions WHERE customer_id = 'b'")  # cascades to the messages
    kept, recount = await statistics(engine)
    assert kept == recount and "b" not in kept
    assert await Search(engine).messages("b", "one", 10, 0) == []


async def test_0005_counts_messages_stored_before_it_and_goes_down(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate_to(url, "0004"))
        await write(engine, "old", TEXTS)
        await write(engine, "other", ["parsnip parsnip"])
        async with engine.begin() as conn:
            await conn.run_sync(migrate_to(url, "head"))
        kept, recount = await statistics(engine)
        assert kept == recount and set(kept) == {"old", "other"}
        await change(engine, "DELETE FROM chat_sessions WHERE customer_id = 'other'")
        for query in QUERIES:  # "old" is alone now: FTS5's own scores
            expected = await fts5_bm25(engine, query)
            got = await ranked(Search(engine), "old", query)
            assert [i for i, _ in got] == [i for i, _ in expected]
            assert [s for _, s in got] == pytest.approx([s for _, s in expected], rel=1e-12)

        async with engine.begin() as conn:
            await conn.run_sync(migrate_to(url, "0004", down=True))
            tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
        assert not {"chat_messages_fts_stats", "chat_messages_fts_instances"} & tables
        [added] = await write(engine, "old", ["turnip"])  # 0002's triggers index it again
        async with engine.connect() as conn:
            found = await conn.scalar(
                sa.text(
                    "SELECT k.message_id FROM chat_messages_fts f JOIN chat_messages_fts_keys k"
                    " ON k.id = f.rowid WHERE chat_messages_fts MATCH 'turnip'"
                )
            )
        assert found == added.hex
    finally:
        await engine.dispose()
