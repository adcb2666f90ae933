"""BM25 over one customer's messages on SQLite: a customer's scores and order depend on their data alone.

FTS5's ``bm25()`` takes its statistics from the whole table, every customer's messages together: how many
documents there are, their average length, how many hold each term. Another customer writing a rare word
a dozen times halved a customer's scores for it, which told them that someone else uses the word, and how
often. So FTS5 still finds the matches (its MATCH, its tokenizer), and the score is computed here with
FTS5's own formula and constants (k1 = 1.2, b = 0.75, every column weighing 1, an IDF of at least 1e-6;
see ``fts5Bm25Function`` in SQLite's ext/fts5/fts5_aux.c) from the customer's own numbers:

- documents and tokens in all: ``chat_messages_fts_stats``, kept by the index triggers (migration 0005);
- each matching message's length: ``chat_messages_fts_keys.tokens``, FTS5's own count;
- each term's frequency in each of the customer's messages, and so its document frequency: the
  ``fts5vocab`` instance table read over the term's prefix range, where it falls in the customer's rows.

A customer alone in the database gets exactly the scores ``bm25()`` gives (a test holds them equal).

Why this and not a table per customer: FTS5 would then count per customer by itself, but customers are
unbounded (any token subject), the triggers could not pick a table, and the schema would grow with each
one. Why totals kept by the triggers: counting them at query time would read all the customer's rows on
every search. A search reads the terms' postings and scores every match of the customer before the page
is cut, as ``ORDER BY bm25() LIMIT`` did; measured on 100,000 messages of 50 customers, it costs what
the plain FTS5 query did for common words (0.5 to 1 times), about 1.5 ms more for a rare one; keeping
the totals adds about 6 µs to indexing a message (57 → 63 µs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

K1 = 1.2
B = 0.75
IDF_FLOOR = 1e-6

# The characters FTS5's unicode61 tokenizer folds where ``str.lower`` leaves them (micro sign, long s, final
# sigma, Greek symbol forms, prosgegrammeni; found by comparing every character with FTS5's own tokens): a
# query term is folded the same way before its postings are read from the vocabulary.
UNICODE61_FOLDS = str.maketrans("µſςϐϑϕϖϰϱϵẛ\u1fbe", "μsσβθφπκρεṡι")

STATS = "SELECT documents, tokens FROM chat_messages_fts_stats WHERE customer_id = :customer_id"
# Each term's occurrences in the customer's messages: the term's prefix range in the vocabulary, kept when
# the occurrence is in one of the customer's index rows (read once, by the index on customer_id; looking
# each occurrence's row up instead cost four times as much for a common word).
MINE = "WITH mine AS MATERIALIZED (SELECT id FROM chat_messages_fts_keys WHERE customer_id = :customer_id)"
TERM_COUNTS = """
SELECT {n} AS term, doc, count(*) AS tf FROM chat_messages_fts_instances
WHERE term >= :low{n} AND term < :high{n} AND doc IN mine
GROUP BY doc
"""
# CROSS JOIN keeps FTS5 the outer loop: led by the index on customer_id instead, SQLite would run the MATCH
# once per row of the customer's (minutes, not milliseconds, for a customer with thousands of messages).
MATCHES = """
SELECT k.id AS doc, k.tokens, m.id, m.created_at
FROM chat_messages_fts
CROSS JOIN chat_messages_fts_keys k ON k.id = chat_messages_fts.rowid
CROSS JOIN chat_messages m ON m.id = k.message_id
WHERE chat_messages_fts MATCH :query AND k.customer_id = :customer_id
"""


def prefix_range(term: str) -> tuple[str, str]:
    """The vocabulary's terms that start with ``term`` (as FTS5 folds it) lie in [low, high)."""
    low = term.translate(UNICODE61_FOLDS)
    return low, low[:-1] + chr(ord(low[-1]) + 1)


def term_counts_query(terms: int) -> str:
    return MINE + " UNION ALL ".join(TERM_COUNTS.format(n=n) for n in range(terms))


def term_counts_params(terms: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for n, term in enumerate(terms):
        params[f"low{n}"], params[f"high{n}"] = prefix_range(term)
    return params


@dataclass(frozen=True)
class Collection:
    """The customer's indexed messages: how many, and their average length in tokens."""

    documents: int
    average_length: float

    def idf(self, holding: int) -> float:
        """FTS5's IDF of a term ``holding`` documents hold."""
        idf = math.log((self.documents - holding + 0.5) / (holding + 0.5))
        return idf if idf > 0.0 else IDF_FLOOR

    def score(self, idfs: Sequence[float], frequencies: Sequence[int], length: int) -> float:
        """BM25 of one document, summed over the terms in query order (as FTS5 sums)."""
        score = 0.0
        for idf, tf in zip(idfs, frequencies, strict=True):
            score += idf * ((tf * (K1 + 1.0)) / (tf + K1 * (1 - B + B * length / self.average_length)))
        return score


def scores(
    collection: Collection,
    counts: Sequence[Mapping[int, int]],
    lengths: Mapping[int, int],
) -> dict[int, float]:
    """Each matching document's score, from the terms' counts per document (``counts[n][doc]``).

    Every match holds every term (FTS5 matched it): a match the vocabulary did not show for a term (a
    character folded some other way) still counts once for it, in its frequency and the term's documents.
    """
    matched = lengths.keys()
    idfs = [collection.idf(len(per_doc.keys() | matched)) for per_doc in counts]
    return {
        doc: collection.score(idfs, [max(per_doc.get(doc, 0), 1) for per_doc in counts], length)
        for doc, length in lengths.items()
    }
