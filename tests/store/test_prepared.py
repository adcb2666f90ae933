"""Prepared statements store and read exactly what ``Connection.execute`` would, on the raw cursor."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select
from sqlalchemy.exc import IntegrityError

from parley.store.prepared import Statements
from parley.store.tables import Base, ChatSession, Message


def test_prepared_rows_and_values_match_sqlalchemy(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    Base.metadata.create_all(engine)
    now = datetime(2026, 11, 24, 12, 30, 1, 123456, tzinfo=UTC)
    message_id = uuid.uuid4()
    session = {"id": uuid.uuid4(), "customer_id": "c", "title": "t", "created_at": now, "updated_at": now}
    message = {
        "id": message_id,
        "session_id": session["id"],
        "customer_id": "c",
        "role": "assistant",
        "content": 'quote " é 🎉',
        "status": "completed",
        "usage": {"input_tokens": 3},
        "parent_id": None,
        "created_at": now,
        "updated_at": now,
    }
    prepared = Statements()
    with engine.begin() as conn:
        prepared.execute(conn, insert(ChatSession), session)
        prepared.executemany(conn, insert(Message), [message])
        query = select(Message.id, Message.parent_id, Message.content, Message.usage, Message.created_at)
        fast = prepared.rows(conn, query, {})
        slow = conn.execute(query).all()
        raw = conn.exec_driver_sql("SELECT id, created_at FROM chat_messages").all()
    assert [tuple(r) for r in fast] == [tuple(r) for r in slow]
    assert fast[0].id == message_id and fast[0].created_at == now and fast[0].usage == {"input_tokens": 3}
    # Stored in SQLAlchemy's own formats: a 32-digit hex UUID, a naive ISO-like timestamp.
    assert raw[0][0] == message_id.hex and raw[0][1] == "2026-11-24 12:30:01.123456"
    with pytest.raises(IntegrityError), engine.begin() as conn:
        prepared.executemany(conn, insert(Message), [message])  # the same id again
    engine.dispose()
