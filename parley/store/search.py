"""Full-text search over a customer's messages: FTS5 on SQLite, ``tsvector`` + GIN on PostgreSQL.

Both indexes come from migration 0002 and cover messages that finished streaming. A query is cut into
words (letters and digits); a message matches when it has every word, each as a word prefix, ignoring
case. Results are ranked (bm25 / ts_rank), best first; the snippet is built here, the same on both.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, String, Text, Uuid, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.store.db import read_retried
from parley.store.tables import UTCDateTime

SEARCH_CHARS = 100_000  # as migration 0002 indexes
MAX_TERMS = 16
MAX_TERM_CHARS = 64
SNIPPET_WORDS = 24
MARK_OPEN, MARK_CLOSE = "<mark>", "</mark>"
WORD = re.compile(r"[^\W_]+")

_COLUMNS = "m.id, m.session_id, s.title, m.role, m.content, m.created_at"
SQLITE_SEARCH = f"""
SELECT {_COLUMNS}, -bm25(chat_messages_fts) AS score
FROM chat_messages_fts
JOIN chat_messages_fts_keys k ON k.id = chat_messages_fts.rowid
JOIN chat_messages m ON m.id = k.message_id
JOIN chat_sessions s ON s.id = m.session_id
WHERE chat_messages_fts MATCH :query AND m.customer_id = :customer_id
ORDER BY score DESC, m.created_at DESC, m.id
LIMIT :limit OFFSET :offset
"""
POSTGRES_SEARCH = f"""
SELECT {_COLUMNS}, ts_rank(m.search, q.query) AS score
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
        """A page of the customer's messages matching ``query``, best first; none for a query of no words."""
        terms = terms_of(query)
        if not terms:
            return []
        sql, match = (
            (POSTGRES_SEARCH, tsquery(terms)) if self.postgres else (SQLITE_SEARCH, fts5_query(terms))
        )
        statement = text(sql).columns(
            id=Uuid,
            session_id=Uuid,
            title=String,
            role=String,
            content=Text,
            created_at=UTCDateTime,
            score=Float,
        )
        params = {"query": match, "customer_id": customer_id, "limit": limit, "offset": offset}

        async def search(conn: AsyncConnection) -> list[Any]:
            return list(await conn.execute(statement, params))

        rows = await read_retried(self.engine.connect, search, "The search could not be run.")
        return [_hit(row, terms) for row in rows]


def _hit(row: Any, terms: Sequence[str]) -> SearchHit:
    return SearchHit(
        message_id=row.id,
        session_id=row.session_id,
        session_title=row.title,
        role=row.role,
        snippet=snippet(row.content[:SEARCH_CHARS], terms),
        created_at=row.created_at,
        score=float(row.score or 0.0),
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
