"""The tables: chat sessions, their tags, and their messages (a tree through ``parent_id``).

Search indexes are not declared here: they are dialect-specific and live in migration 0002
(an FTS5 table with triggers on SQLite, a generated ``tsvector`` column with a GIN index on PostgreSQL).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class ChatSession(Base):
    __tablename__ = "chat_sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    customer_id: Mapped[str] = mapped_column(String(255), index=True)
    title: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The branch being shown and continued. No foreign key (it would make the two tables refer to each
    # other); the repository keeps it pointing at a message of this session, or null.
    active_leaf_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)


class SessionTag(Base):
    __tablename__ = "chat_session_tags"

    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("chat_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class Message(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (
        Index("ix_chat_messages_session_created", "session_id", "created_at"),
        Index("ix_chat_messages_parent_id", "parent_id"),
        Index(
            "ix_chat_messages_streaming",
            "owner_id",
            sqlite_where=text("status = 'streaming'"),
            postgresql_where=text("status = 'streaming'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("chat_sessions.id", ondelete="CASCADE"))
    customer_id: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    reasoning: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(255), default=None)
    provider: Mapped[str | None] = mapped_column(String(64), default=None)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    request_id: Mapped[str | None] = mapped_column(String(255), default=None)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("chat_messages.id", ondelete="SET NULL"), default=None
    )
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # An agentic answer's tool steps, oldest first: [{text, calls: [{id, name, input}],
    # results: [{call_id, output, is_error}]}]; null for an answer that called no tool. ``content`` stays
    # the whole text sent, the steps' texts first (see parley/agent.py).
    tool_steps: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    # The server process streaming this answer (parley/recovery.py), and the seq of the turn's last event
    # that ``content`` reflects (written with each checkpoint and at the end).
    owner_id: Mapped[str | None] = mapped_column(String(64), default=None)
    stream_seq: Mapped[int | None] = mapped_column(Integer, default=None)


class ServerProcess(Base):
    """A running Parley process and its lease: ``heartbeat_at`` (seconds since the epoch, on the database's
    clock where it has one) is renewed every third of ``PARLEY_OWNER_LEASE_S``. ``host_key`` (boot id and
    PID namespace) and ``pid_started`` let a process on the same host tell at once that another has died."""

    __tablename__ = "parley_processes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    host_key: Mapped[str | None] = mapped_column(String(255), default=None)
    pid_started: Mapped[str | None] = mapped_column(String(64), default=None)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
