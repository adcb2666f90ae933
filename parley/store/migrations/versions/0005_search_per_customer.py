"""Search statistics per customer (SQLite): what BM25 needs so a customer's scores depend on their data alone.

FTS5's ``bm25()`` counts documents, their lengths and each term's documents over the whole table, every
customer's messages together, so one customer's writes moved another's scores (parley/store/bm25.py ranks
from these per-customer numbers instead). The index triggers of 0002 now also keep:

- ``chat_messages_fts_keys.customer_id`` (indexed) and ``.tokens``: whose message an index row is, and its
  length in tokens as FTS5 counted it (read from FTS5's ``docsize`` table: one varint per row, one column);
- ``chat_messages_fts_stats``: per customer, how many indexed messages and how many tokens in all;
- ``chat_messages_fts_instances``: an ``fts5vocab`` table over the index (term, doc, offset), read per term.

PostgreSQL needs none of it: ``ts_rank`` looks at one document and the query only.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SEARCH_CHARS = 100_000
DIGITS = "'0123456789ABCDEF'"


def _byte(i: int) -> str:
    """Byte ``i`` of the hex text ``h`` as a number (no ``unhex`` before SQLite 3.41)."""
    high = f"instr({DIGITS}, substr(h, {2 * i + 1}, 1)) - 1"
    low = f"instr({DIGITS}, substr(h, {2 * i + 2}, 1)) - 1"
    return f"(({high}) * 16 + {low})"


def _varint(size: int) -> str:
    """A ``size``-byte SQLite varint: 7 bits a byte, most significant first."""
    return " | ".join(f"(({_byte(i)} & 127) << {7 * (size - 1 - i)})" for i in range(size))


# A row's token count from its docsize blob: up to 4 bytes (2**28 tokens; 100,000 characters need 3).
_TOKENS = "CASE length(h) " + " ".join(f"WHEN {2 * n} THEN {_varint(n)}" for n in (1, 2, 3, 4)) + " END"


def tokens_of(rowid: str) -> str:
    return f"(SELECT {_TOKENS} FROM (SELECT hex(sz) AS h FROM chat_messages_fts_docsize WHERE id = {rowid}))"


KEY_OF_NEW = "(SELECT id FROM chat_messages_fts_keys WHERE message_id = new.id)"

# Take an indexed message's counts out of its customer's totals (nothing when it was not indexed).
_UNCOUNT = """UPDATE chat_messages_fts_stats SET
        documents = documents - 1,
        tokens = tokens - (SELECT tokens FROM chat_messages_fts_keys WHERE message_id = {row}.id)
    WHERE customer_id = (SELECT customer_id FROM chat_messages_fts_keys WHERE message_id = {row}.id);"""
_INDEX_NEW = f"""INSERT INTO chat_messages_fts (rowid, content)
        VALUES ({KEY_OF_NEW}, substr(new.content, 1, {SEARCH_CHARS}));
    UPDATE chat_messages_fts_keys SET tokens = {tokens_of("chat_messages_fts_keys.id")}
        WHERE message_id = new.id;
    INSERT INTO chat_messages_fts_stats (customer_id, documents, tokens)
        SELECT customer_id, 1, tokens FROM chat_messages_fts_keys WHERE message_id = new.id
        ON CONFLICT (customer_id) DO UPDATE SET
            documents = documents + 1, tokens = chat_messages_fts_stats.tokens + excluded.tokens;"""
_DROP_EMPTY = "DELETE FROM chat_messages_fts_stats WHERE customer_id = old.customer_id AND documents = 0;"

TRIGGERS_UP = [
    f"""CREATE TRIGGER chat_messages_fts_insert AFTER INSERT ON chat_messages
    WHEN new.status != 'streaming' BEGIN
        INSERT INTO chat_messages_fts_keys (message_id, customer_id) VALUES (new.id, new.customer_id);
        {_INDEX_NEW}
    END""",
    f"""CREATE TRIGGER chat_messages_fts_update AFTER UPDATE OF content, status ON chat_messages
    WHEN new.status != 'streaming' BEGIN
        {_UNCOUNT.format(row="new")}
        INSERT OR IGNORE INTO chat_messages_fts_keys (message_id, customer_id)
            VALUES (new.id, new.customer_id);
        DELETE FROM chat_messages_fts WHERE rowid = {KEY_OF_NEW};
        {_INDEX_NEW}
    END""",
    f"""CREATE TRIGGER chat_messages_fts_delete AFTER DELETE ON chat_messages BEGIN
        {_UNCOUNT.format(row="old")}
        {_DROP_EMPTY}
        DELETE FROM chat_messages_fts
            WHERE rowid = (SELECT id FROM chat_messages_fts_keys WHERE message_id = old.id);
        DELETE FROM chat_messages_fts_keys WHERE message_id = old.id;
    END""",
]

# 0002's triggers, for going down.
TRIGGERS_DOWN = [
    f"""CREATE TRIGGER chat_messages_fts_insert AFTER INSERT ON chat_messages
    WHEN new.status != 'streaming' BEGIN
        INSERT INTO chat_messages_fts_keys (message_id) VALUES (new.id);
        INSERT INTO chat_messages_fts (rowid, content) VALUES (
            (SELECT id FROM chat_messages_fts_keys WHERE message_id = new.id),
            substr(new.content, 1, {SEARCH_CHARS}));
    END""",
    f"""CREATE TRIGGER chat_messages_fts_update AFTER UPDATE OF content, status ON chat_messages
    WHEN new.status != 'streaming' BEGIN
        INSERT OR IGNORE INTO chat_messages_fts_keys (message_id) VALUES (new.id);
        DELETE FROM chat_messages_fts
            WHERE rowid = (SELECT id FROM chat_messages_fts_keys WHERE message_id = new.id);
        INSERT INTO chat_messages_fts (rowid, content) VALUES (
            (SELECT id FROM chat_messages_fts_keys WHERE message_id = new.id),
            substr(new.content, 1, {SEARCH_CHARS}));
    END""",
    """CREATE TRIGGER chat_messages_fts_delete AFTER DELETE ON chat_messages BEGIN
        DELETE FROM chat_messages_fts
            WHERE rowid = (SELECT id FROM chat_messages_fts_keys WHERE message_id = old.id);
        DELETE FROM chat_messages_fts_keys WHERE message_id = old.id;
    END""",
]
DROP_TRIGGERS = [
    "DROP TRIGGER IF EXISTS chat_messages_fts_insert",
    "DROP TRIGGER IF EXISTS chat_messages_fts_update",
    "DROP TRIGGER IF EXISTS chat_messages_fts_delete",
]

SQLITE_UP = [
    "ALTER TABLE chat_messages_fts_keys ADD COLUMN customer_id VARCHAR(255)",
    "ALTER TABLE chat_messages_fts_keys ADD COLUMN tokens INTEGER",
    """CREATE TABLE chat_messages_fts_stats (
        customer_id VARCHAR(255) PRIMARY KEY,
        documents INTEGER NOT NULL,
        tokens INTEGER NOT NULL
    )""",
    "CREATE INDEX ix_chat_messages_fts_keys_customer ON chat_messages_fts_keys (customer_id)",
    "CREATE VIRTUAL TABLE chat_messages_fts_instances USING fts5vocab(chat_messages_fts, instance)",
    *DROP_TRIGGERS,
    *TRIGGERS_UP,
    f"""UPDATE chat_messages_fts_keys SET
        customer_id = (SELECT customer_id FROM chat_messages WHERE id = chat_messages_fts_keys.message_id),
        tokens = {tokens_of("chat_messages_fts_keys.id")}""",
    """INSERT INTO chat_messages_fts_stats (customer_id, documents, tokens)
        SELECT customer_id, count(*), sum(tokens) FROM chat_messages_fts_keys GROUP BY customer_id""",
]
SQLITE_DOWN = [
    *DROP_TRIGGERS,
    *TRIGGERS_DOWN,
    "DROP TABLE IF EXISTS chat_messages_fts_instances",
    "DROP TABLE IF EXISTS chat_messages_fts_stats",
    "DROP INDEX IF EXISTS ix_chat_messages_fts_keys_customer",
    "ALTER TABLE chat_messages_fts_keys DROP COLUMN tokens",
    "ALTER TABLE chat_messages_fts_keys DROP COLUMN customer_id",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_UP:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_DOWN:
            op.execute(statement)
