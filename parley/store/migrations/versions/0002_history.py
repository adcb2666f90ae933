"""History: the active branch of a session, session tags, and full-text search over messages.

Search differs by dialect: SQLite gets an FTS5 table kept up to date by triggers (with a small key table,
since the messages' UUID keys cannot be FTS rowids); PostgreSQL gets a generated ``tsvector`` column with
a GIN index. Both index the first ``SEARCH_CHARS`` characters of messages that are no longer streaming,
split on punctuation and spaces, case-folded, without stemming (see docs/history.md).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SEARCH_CHARS = 100_000

SQLITE_UP = [
    "CREATE VIRTUAL TABLE chat_messages_fts USING fts5(content, tokenize = 'unicode61 remove_diacritics 0')",
    """CREATE TABLE chat_messages_fts_keys (
        id INTEGER PRIMARY KEY,
        message_id CHAR(32) NOT NULL UNIQUE
    )""",
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
    """INSERT INTO chat_messages_fts_keys (message_id)
        SELECT id FROM chat_messages WHERE status != 'streaming'""",
    f"""INSERT INTO chat_messages_fts (rowid, content)
        SELECT k.id, substr(m.content, 1, {SEARCH_CHARS})
        FROM chat_messages_fts_keys k JOIN chat_messages m ON m.id = k.message_id""",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS chat_messages_fts_delete",
    "DROP TRIGGER IF EXISTS chat_messages_fts_update",
    "DROP TRIGGER IF EXISTS chat_messages_fts_insert",
    "DROP TABLE IF EXISTS chat_messages_fts_keys",
    "DROP TABLE IF EXISTS chat_messages_fts",
]

# Punctuation becomes space first, so both backends split words the same way (the default parser would
# otherwise drop tag-like text such as "<div>" and keep URLs and e-mail addresses whole).
POSTGRES_UP = [
    f"""ALTER TABLE chat_messages ADD COLUMN search tsvector GENERATED ALWAYS AS (
        CASE WHEN status <> 'streaming' THEN to_tsvector('simple',
            regexp_replace(left(content, {SEARCH_CHARS}), '[[:punct:][:space:]]+', ' ', 'g'))
        END) STORED""",
    "CREATE INDEX ix_chat_messages_search ON chat_messages USING GIN (search)",
]
POSTGRES_DOWN = [
    "DROP INDEX IF EXISTS ix_chat_messages_search",
    "ALTER TABLE chat_messages DROP COLUMN IF EXISTS search",
]

BACKFILL_ACTIVE_LEAF = """
UPDATE chat_sessions SET active_leaf_id = (
    SELECT m.id FROM chat_messages m WHERE m.session_id = chat_sessions.id
    ORDER BY m.created_at DESC, m.id DESC LIMIT 1
)"""


def upgrade() -> None:
    op.add_column("chat_sessions", sa.Column("active_leaf_id", sa.Uuid(), nullable=True))
    op.execute(BACKFILL_ACTIVE_LEAF)
    op.create_table(
        "chat_session_tags",
        sa.Column(
            "session_id",
            sa.Uuid(),
            sa.ForeignKey("chat_sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_index("ix_chat_messages_parent_id", "chat_messages", ["parent_id"])
    for statement in POSTGRES_UP if _dialect() == "postgresql" else SQLITE_UP:
        op.execute(statement)


def downgrade() -> None:
    for statement in POSTGRES_DOWN if _dialect() == "postgresql" else SQLITE_DOWN:
        op.execute(statement)
    op.drop_index("ix_chat_messages_parent_id", table_name="chat_messages")
    op.drop_table("chat_session_tags")
    # Plain ALTER (SQLite >= 3.35 has it): a batch rebuild of chat_sessions would cascade-delete messages.
    op.execute("ALTER TABLE chat_sessions DROP COLUMN active_leaf_id")


def _dialect() -> str:
    return str(op.get_bind().dialect.name)
