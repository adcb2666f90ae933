"""Repository functions: the only code that reads and writes sessions and messages."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.errors import DatabaseFailed
from parley.store.db import DbSession, sessionmaker
from parley.store.tables import ChatSession, Message, utcnow

TITLE_CHARS = 80


@dataclass(frozen=True)
class ContextMessage:
    role: str
    content: str


@dataclass(frozen=True)
class TurnRecord:
    """What ``start_turn`` committed: the ids the turn reports and the history before it."""

    session_id: uuid.UUID
    user_message_id: uuid.UUID
    ai_message_id: uuid.UUID
    history: list[ContextMessage]


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


def title_from(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


class Store:
    """Sessions and messages over one engine. Every failure surfaces as ``DatabaseFailed``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def find_session(self, customer_id: str, session_id: str) -> ChatSession | None:
        """The customer's session, or None when the id is malformed, unknown or someone else's."""
        key = parse_uuid(session_id)
        if key is None:
            return None
        try:
            async with self._sessions() as db:
                found = await db.get(ChatSession, key)
        except SQLAlchemyError as exc:
            raise DatabaseFailed("The session could not be read.") from exc
        return found if found is not None and found.customer_id == customer_id else None

    async def start_turn(
        self,
        *,
        customer_id: str,
        session_id: uuid.UUID | None,
        prompt: str,
        model: str,
        provider: str,
        request_id: str,
        imported: Sequence[ContextMessage] = (),
    ) -> TurnRecord:
        """Commit the session (if new, with ``imported`` history), the question and an empty answer row."""
        try:
            async with self._sessions() as db, db.begin():
                now = utcnow()
                history: list[ContextMessage] = []
                parent: uuid.UUID | None = None
                if session_id is None:
                    session = ChatSession(customer_id=customer_id, title=title_from(prompt))
                    session.created_at = session.updated_at = now
                    db.add(session)
                    await db.flush()
                    session_id = session.id
                else:
                    rows = await self._messages(db, session_id)
                    history = [ContextMessage(m.role, m.content) for m in rows if m.content]
                    parent = rows[-1].id if rows else None
                    await db.execute(
                        update(ChatSession).where(ChatSession.id == session_id).values(updated_at=now)
                    )
                common = {"session_id": session_id, "customer_id": customer_id, "request_id": request_id}
                turn = [
                    *(
                        Message(role=m.role, content=m.content, status="completed", **common)
                        for m in imported
                    ),
                    Message(role="user", content=prompt, status="completed", **common),
                    Message(
                        role="assistant",
                        content="",
                        status="streaming",
                        model=model,
                        provider=provider,
                        **common,
                    ),
                ]
                for offset, message in enumerate(turn):
                    # A microsecond apart, so they sort in this order on every backend.
                    message.created_at = message.updated_at = now + timedelta(microseconds=offset)
                    message.id = uuid.uuid4()
                    message.parent_id = parent
                    parent = message.id
                db.add_all(turn)
            return TurnRecord(session_id, turn[-2].id, turn[-1].id, history)
        except SQLAlchemyError as exc:
            raise DatabaseFailed("The message could not be saved; nothing was stored.") from exc

    async def checkpoint(self, ai_message_id: uuid.UUID, content: str, reasoning: str | None) -> None:
        """Store the answer so far; the row stays ``streaming``."""
        try:
            async with self._sessions() as db, db.begin():
                await db.execute(
                    update(Message)
                    .where(Message.id == ai_message_id)
                    .values(content=content, reasoning=reasoning, updated_at=utcnow())
                )
        except SQLAlchemyError as exc:
            raise DatabaseFailed("The answer could not be saved.") from exc

    async def finish_turn(
        self,
        *,
        session_id: uuid.UUID,
        ai_message_id: uuid.UUID,
        content: str,
        reasoning: str | None,
        status: str,
        usage: dict[str, Any] | None,
        error_code: str | None,
    ) -> None:
        """Store the final answer with its status and usage, and touch the session."""
        try:
            async with self._sessions() as db, db.begin():
                now = utcnow()
                await db.execute(
                    update(Message)
                    .where(Message.id == ai_message_id)
                    .values(
                        content=content,
                        reasoning=reasoning,
                        status=status,
                        usage=usage,
                        error_code=error_code,
                        updated_at=now,
                    )
                )
                await db.execute(
                    update(ChatSession).where(ChatSession.id == session_id).values(updated_at=now)
                )
        except SQLAlchemyError as exc:
            raise DatabaseFailed("The answer could not be saved.") from exc

    async def session_messages(self, session_id: uuid.UUID) -> Sequence[Message]:
        async with self._sessions() as db:
            return await self._messages(db, session_id)

    @staticmethod
    async def _messages(db: DbSession, session_id: uuid.UUID) -> Sequence[Message]:
        result = await db.scalars(
            select(Message).where(Message.session_id == session_id).order_by(Message.created_at)
        )
        rows: Sequence[Message] = result.all()
        return rows
