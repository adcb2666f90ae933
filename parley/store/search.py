"""Full-text search over a customer's messages: FTS5 on SQLite, ``tsvector`` + GIN on PostgreSQL.

Both indexes come from migration 0002 and cover messages that finished streaming. A query is cut into
words (letters and digits); a message matches when it has every word, each as a word prefix, ignoring
case. Results are ranked (BM25 / ts_rank), best first, from the customer's own messages alone (bm25.py);
the snippet is built here, the same on both.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Integer, String, Text, Uuid, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.store import bm25
from parley.store.db import read_retried
from parley.store.tables import ChatSession, Message, UTCDateTime

SEARCH_CHARS = 100_000  # as migration 0002 indexes
MAX_TERMS = 16
MAX_TERM_CHARS = 64
SNIPPET_WORDS = 24
MARK_OPEN, MARK_CLOSE = "<mark>", "</mark>"
WORD = re.compile(r"[^\W_]+")

POSTGRES_SEARCH = """
SELECT m.id, m.session_id, s.title, m.role, m.content, m.created_at, ts_rank(m.search, q.query) AS score
FROM chat_messages m
JOIN chat_sessions s ON s.id = m.session_id
CROSS JOIN (SELECT to_tsquery('simple', :query) AS query) q
WHERE m.search @@ q.query AND m.customer_id = :customer_id
ORDER BY score DESC, m.created_at DESC, m.id
LIMIT :limit OFFSET :offset
"""


@dataclass(frozen=True)
class SearchHit:
    message_id: uuid.UUID
    session_id: uuid.UUID
    session_title: str
    role: str
    snippet: str
    created_at: datetime
    score: float


def terms_of(query: str) -> list[str]:
    """The words of a query, lower-cased, de-duplicated, bounded in number and length."""
    words = (w.lower()[:MAX_TERM_CHARS] for w in WORD.findall(query))
    return list(dict.fromkeys(words))[:MAX_TERMS]


def fts5_query(terms: Sequence[str]) -> str:
    return " ".join(f'"{t}"*' for t in terms)  # terms are letters and digits only: nothing to escape


def tsquery(terms: Sequence[str]) -> str:
    return " & ".join(f"{t}:*" for t in terms)


class Search:
    """Search over one engine's messages."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    async def messages(self, customer_id: str, query: str, limit: int, offset: int) -> list[SearchHit]:
        """A page of the customer's messages matching ``query``, best first; none for a query of no words.

        Scores and order depend on the customer's own messages only: ``ts_rank`` looks at one message and
        the query; on SQLite, BM25 is computed from the customer's statistics (see bm25.py).
        """
        terms = terms_of(query)
        if not terms:
            return []
        page = _postgres_page if self.postgres else _sqlite_page

        async def search(conn: AsyncConnection) -> list[tuple[Any, float]]:
            return await page(conn, customer_id, terms, limit, offset)

        found = await read_retried(self.engine.connect, search, "The search could not be run.")
        return [_hit(row, score, terms) for row, score in found]


async def _postgres_page(
    conn: AsyncConnection, customer_id: str, terms: Sequence[str], limit: int, offset: int
) -> list[tuple[Any, float]]:
    statement = text(POSTGRES_SEARCH).columns(
        id=Uuid,
        session_id=Uuid,
        title=String,
        role=String,
        content=Text,
        created_at=UTCDateTime,
        score=Float,
    )
    params = {"query": tsquery(terms), "customer_id": customer_id, "limit": limit, "offset": offset}
    return [(row, float(row.score or 0.0)) for row in await conn.execute(statement, params)]


async def _sqlite_page(
    conn: AsyncConnection, customer_id: str, terms: Sequence[str], limit: int, offset: int
) -> list[tuple[Any, float]]:
    """Rank every match of the customer by their own BM25 (see bm25.py), then read the page's rows."""
    mine = {"customer_id": customer_id}
    stats = (await conn.execute(text(bm25.STATS), mine)).first()
    if stats is None:
        return []
    matching = text(bm25.MATCHES).columns(doc=Integer, tokens=Integer, id=Uuid, created_at=UTCDateTime)
    matches = (await conn.execute(matching, {"query": fts5_query(terms), **mine})).all()
    if not matches:
        return []
    counts: list[dict[int, int]] = [{} for _ in terms]
    term_counts = text(bm25.term_counts_query(len(terms)))
    for term, doc, tf in await conn.execute(term_counts, {**bm25.term_counts_params(terms), **mine}):
        counts[term][doc] = tf
    collection = bm25.Collection(stats.documents, stats.tokens / stats.documents)
    scored = bm25.scores(collection, counts, {m.doc: m.tokens for m in matches})
    # Best first; among equal scores the newest, then by id (stable sorts, last key first).
    ranked = sorted(matches, key=lambda m: m.id)
    ranked.sort(key=lambda m: m.created_at, reverse=True)
    ranked.sort(key=lambda m: scored[m.doc], reverse=True)
    page = ranked[offset : offset + limit]
    rows = await _rows(conn, [m.id for m in page])
    return [(rows[m.id], scored[m.doc]) for m in page if m.id in rows]  # one deleted meanwhile is left out


async def _rows(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The hits' messages with their sessions' titles, by message id."""
    columns = (Message.id, Message.session_id, ChatSession.title, Message.role, Message.content)
    query = (
        select(*columns, Message.created_at)
        .join(ChatSession, ChatSession.id == Message.session_id)
        .where(Message.id.in_(ids))
    )
    return {row.id: row for row in await conn.execute(query)}


def _hit(row: Any, score: float, terms: Sequence[str]) -> SearchHit:
    return SearchHit(
        message_id=row.id,
        session_id=row.session_id,
        session_title=row.title,
        role=row.role,
        snippet=snippet(row.content[:SEARCH_CHARS], terms),
        created_at=row.created_at,
        score=score,
    )


def snippet(content: str, terms: Sequence[str], words: int = SNIPPET_WORDS) -> str:
    """About ``words`` words of ``content`` around the most matches, HTML-escaped, matches in <mark>.

    A word matches when it starts with a query term, ignoring case (as the search does).
    """
    spans = [m.span() for m in WORD.finditer(content)]
    hits = [i for i, (a, b) in enumerate(spans) if content[a:b].lower().startswith(tuple(terms))]
    if not spans:
        return html.escape(content[:200])
    first = _best_window(hits, words)
    last = min(len(spans), first + words) - 1
    # Cut between words, keeping the punctuation that touches the words shown.
    start = spans[first - 1][1] if first > 0 else 0
    end = spans[last + 1][0] if last < len(spans) - 1 else len(content)
    marked: list[str] = ["…" if start > 0 else ""]
    cursor = start
    for i in (h for h in hits if first <= h <= last):
        a, b = spans[i]
        marked += [html.escape(content[cursor:a]), MARK_OPEN, html.escape(content[a:b]), MARK_CLOSE]
        cursor = b
    marked += [html.escape(content[cursor:end]), "…" if end < len(content) else ""]
    return " ".join("".join(marked).split())


def _best_window(hits: Sequence[int], words: int) -> int:
    """The first word of the ``words``-long window holding the most hits, starting a little before them."""
    if not hits:
        return 0
    best, best_count, end = hits[0], 0, 0
    for i, h in enumerate(hits):
        while end < len(hits) and hits[end] < h + words:
            end += 1
        if end - i > best_count:
            best, best_count = h, end - i
    return max(0, best - min(4, words // 4))
