"""Repository functions: the only code that reads and writes sessions and messages."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.errors import DatabaseFailed, ValidationFailed
from parley.store.branches import ContextMessage, Placement, check_branch_request, place
from parley.store.db import DbSession, WriteGate, sessionmaker
from parley.store.history import History
from parley.store.search import Search
from parley.store.tables import ChatSession, Message, utcnow

__all__ = ["ContextMessage", "Store", "TurnRecord", "parse_uuid", "title_from"]

TITLE_CHARS = 80


@dataclass(frozen=True)
class TurnRecord:
    """What ``start_turn`` committed: the ids the turn reports, the history before it and the prompt.

    ``history`` is the path from the root to the question's parent; ``prompt`` is the question's text
    (the stored one when regenerating); ``new_session`` is true when this turn created the session.
    """

    session_id: uuid.UUID
    user_message_id: uuid.UUID
    ai_message_id: uuid.UUID
    history: list[ContextMessage]
    prompt: str = ""
    new_session: bool = False


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


def title_from(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def _new_session(customer_id: str, prompt: str, now: datetime) -> ChatSession:
    session = ChatSession(id=uuid.uuid4(), customer_id=customer_id, title=title_from(prompt))
    session.created_at = session.updated_at = now
    return session


def _new_messages(
    common: dict[str, Any],
    prompt: str,
    model: str,
    provider: str,
    where: Placement,
    imported: Sequence[ContextMessage],
    now: datetime,
) -> list[Message]:
    """Imported history (new sessions), the question (unless regenerating) and the empty answer row."""
    done = {"status": "completed", **common}
    turn = [
        *(Message(role=m.role, content=m.content, **done) for m in imported),
        *([] if where.question else [Message(role="user", content=prompt, **done)]),
        Message(role="assistant", content="", status="streaming", model=model, provider=provider, **common),
    ]
    _chain(turn, where.parent, now)
    return turn


def _chain(messages: Sequence[Message], parent: uuid.UUID | None, now: datetime) -> None:
    """Give the turn's new messages ids, times and parents: each is the child of the one before."""
    for offset, message in enumerate(messages):
        # A microsecond apart, so they sort in this order on every backend.
        message.created_at = message.updated_at = now + timedelta(microseconds=offset)
        message.id = uuid.uuid4()
        message.parent_id = parent
        parent = message.id


class Store:
    """Sessions and messages over one engine. Every failure surfaces as ``DatabaseFailed``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine)
        self.writing = WriteGate(engine)
        self.history = History(
            self._sessions, engine, self.writing
        )  # the REST side: list, read, edit, branches
        self.search = Search(engine)

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
        edit_of: str | None = None,
        regenerate: str | None = None,
    ) -> TurnRecord:
        """Commit the session (if new, with ``imported`` history), the question and an empty answer row.

        The new answer becomes the session's active leaf. ``edit_of``/``regenerate`` place the turn on a
        new branch (see ``branches.place``); a message they name that is not in the session, or a session
        deleted meanwhile, raises ``ValidationFailed`` and nothing is stored.
        """
        check_branch_request(session_id, edit_of, regenerate)
        try:
            async with self.writing(), self._sessions() as db, db.begin():
                now = utcnow()
                session = None
                if session_id is None:
                    session = _new_session(customer_id, prompt, now)
                    db.add(session)
                    session_id, where = session.id, Placement(None, [], prompt)
                else:
                    where = await self._continue_session(
                        db, customer_id, session_id, now, prompt, edit_of, regenerate
                    )
                common = {"session_id": session_id, "customer_id": customer_id, "request_id": request_id}
                turn = _new_messages(common, prompt, model, provider, where, imported, now)
                db.add_all(turn)
                if session is not None:
                    session.active_leaf_id = turn[-1].id
                else:
                    leaf = update(ChatSession).where(ChatSession.id == session_id)
                    await db.execute(leaf.values(active_leaf_id=turn[-1].id))
            question = where.question or turn[-2].id
            return TurnRecord(
                session_id,
                question,
                turn[-1].id,
                where.history,
                where.prompt,
                new_session=session is not None,
            )
        except SQLAlchemyError as exc:
            raise DatabaseFailed("The message could not be saved; nothing was stored.") from exc

    async def _continue_session(
        self,
        db: DbSession,
        customer_id: str,
        session_id: uuid.UUID,
        now: datetime,
        prompt: str,
        edit_of: str | None,
        regenerate: str | None,
    ) -> Placement:
        # Touching the session first takes its row lock (PostgreSQL) or the write lock (SQLite), so two
        # turns starting at once on one session chain one after the other instead of forking.
        active = await db.execute(
            update(ChatSession)
            .where(ChatSession.id == session_id, ChatSession.customer_id == customer_id)
            .values(updated_at=now)
            .returning(ChatSession.active_leaf_id)
        )
        row = active.first()
        if row is None:
            raise ValidationFailed(f"Session {str(session_id)!r} was not found.", code="session_not_found")
        rows = await self._messages(db, session_id)
        return place(rows, row[0], prompt, edit_of, regenerate)

    async def checkpoint(self, ai_message_id: uuid.UUID, content: str, reasoning: str | None) -> None:
        """Store the answer so far; the row stays ``streaming``."""
        try:
            async with self.writing(), self._sessions() as db, db.begin():
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
            async with self.writing(), self._sessions() as db, db.begin():
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
