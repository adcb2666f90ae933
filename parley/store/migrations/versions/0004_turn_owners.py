"""Durable turns: which server process owns each streaming answer, and the processes' leases.

- ``chat_messages.owner_id``: the process streaming the answer (set when the answer row is created).
- ``chat_messages.stream_seq``: the seq of the turn's last event that the stored content reflects (written
  with each checkpoint and at the end), so a stored partial can be resumed from exactly there.
- ``parley_processes``: one row per running server process, with the time it last renewed its lease
  (seconds since the epoch, on the database's clock where it has one). A streaming answer whose owner has
  no live lease was orphaned by a crash and is closed as ``error``/``interrupted`` (parley/recovery.py).
- A partial index over the streaming answers keeps that sweep cheap however many messages are stored.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("chat_messages", sa.Column("owner_id", sa.String(64), nullable=True))
    op.add_column("chat_messages", sa.Column("stream_seq", sa.Integer(), nullable=True))
    op.create_index(
        "ix_chat_messages_streaming",
        "chat_messages",
        ["owner_id"],
        sqlite_where=sa.text("status = 'streaming'"),
        postgresql_where=sa.text("status = 'streaming'"),
    )
    op.create_table(
        "parley_processes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("host_key", sa.String(255), nullable=True),
        sa.Column("pid_started", sa.String(64), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("parley_processes")
    op.drop_index("ix_chat_messages_streaming", table_name="chat_messages")
    # Plain ALTER on both (SQLite >= 3.35 has it), as in 0003.
    op.execute("ALTER TABLE chat_messages DROP COLUMN stream_seq")
    op.execute("ALTER TABLE chat_messages DROP COLUMN owner_id")
