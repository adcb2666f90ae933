"""Agentic turns: an answer's tool steps (the calls it made and their results), as JSON on its row.

One answer row per turn stays the rule (branches, regenerate and ``dbOperationExecuted`` rely on
question → answer pairs); the intermediate exchange rides along in ``tool_steps``, null when no tool was
called. Same on SQLite and PostgreSQL (a ``JSON`` column; nothing indexes it).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("chat_messages", sa.Column("tool_steps", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Plain ALTER on both (SQLite >= 3.35 has it): a batch rebuild of chat_messages would fight the FTS
    # triggers of 0002 and the self-referencing foreign key.
    op.execute("ALTER TABLE chat_messages DROP COLUMN tool_steps")
