"""Repository functions: the only code that reads and writes sessions and messages."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.errors import DatabaseFailed, ParleyError
from parley.metrics import OFF, Metrics
from parley.store.branches import ContextMessage
from parley.store.db import DbSession, WriteGate, read_again_if_dead, read_retried, sessionmaker
from parley.store.history import History
from parley.store.search import Search
from parley.store.tables import ChatSession, Message
from parley.store.turns import FinishTurn, SaveAnswer, StartTurn, TurnRecord, title_from
from parley.store.writer import Write, writer_for

__all__ = ["ContextMessage", "Store", "TurnRecord", "parse_uuid", "title_from"]

T = TypeVar("T")
log = logging.getLogger("parley.store")

# The final write of an answer is tried this often, a moment apart: a write that failed because its
# connection died (the database restarted, its backends were terminated) gets a fresh one the next time.
FINAL_WRITE_BACKOFF_S = (0.05, 0.25, 1.0)


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


class Store:
    """Sessions and messages over one engine. Every failure surfaces as ``DatabaseFailed``."""

    def __init__(self, engine: AsyncEngine, owner_id: str | None = None, metrics: Metrics = OFF) -> None:
        self.engine = engine
        self.metrics = metrics  # times the turns' writes (``parley_db_write_seconds``)
        self.owner_id = owner_id or uuid.uuid4().hex  # this server process, the owner of its answers
        self._sessions = sessionmaker(engine)
        self.writing = WriteGate(engine)
        self._writer = writer_for(engine)
        self.history = History(
            self._sessions, engine, self.writing
        )  # the REST side: list, read, edit, branches
        self.search = Search(engine)

    async def ping(self) -> None:
        """``SELECT 1``, once more on a fresh connection when the pooled one turned out dead."""

        async def select_one(conn: AsyncConnection) -> None:
            await conn.execute(text("SELECT 1"))

        await read_again_if_dead(self.engine.connect, select_one)

    async def find_session(self, customer_id: str, session_id: str) -> ChatSession | None:
        """The customer's session, or None when the id is malformed, unknown or someone else's."""
        key = parse_uuid(session_id)
        if key is None:
            return None

        async def read(db: DbSession) -> ChatSession | None:
            return await db.get(ChatSession, key)

        found = await read_retried(self._sessions, read, "The session could not be read.")
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
        new branch (see ``branches.place``). A session that is unknown or another customer's, a message
        they name that is not in the session, or a session deleted meanwhile raises ``ValidationFailed``
        and nothing is stored.
        """
        start = StartTurn(
            customer_id,
            session_id,
            prompt,
            model,
            provider,
            request_id,
            imported,
            edit_of,
            regenerate,
            self.owner_id,
        )
        return await self._retried(start, "The message could not be saved; nothing was stored.")

    async def checkpoint(
        self,
        ai_message_id: uuid.UUID,
        content: str,
        reasoning: str | None,
        seq: int | None = None,
        tool_steps: list[dict[str, Any]] | None = None,
    ) -> None:
        """Store the answer so far (and an agentic turn's steps so far) as of the turn's event ``seq``;
        the row stays ``streaming``."""
        save = SaveAnswer(ai_message_id, content, reasoning, seq, tool_steps)
        await self._write(save, "The answer could not be saved.")

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
        seq: int | None = None,
        tool_steps: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Store the final answer with its status, usage and tool steps (if any); touch the session.

        Tried again, a moment later, when it fails: the answer is never left ``streaming`` because the
        connection it was written on died. False when recovery closed the answer meanwhile (see
        ``FinishTurn``).
        """
        finish = FinishTurn(
            session_id, ai_message_id, content, reasoning, status, usage, error_code, seq, tool_steps
        )
        return await self._retried(finish, "The answer could not be saved.")

    @property
    def write_engine(self) -> Engine:
        """Where the turns' own writes go: on SQLite the writer thread's engine, else ``engine``'s."""
        return self._writer.engine

    async def run(self, write: Write[T], failure: str) -> T:
        """Run a write function in the turns' writer (see writer.py); any failure is ``DatabaseFailed``.
        Housekeeping (leases, recovery): not in ``parley_db_write_seconds``, which times the turns'."""
        return await self._write(write, failure, timed=False)

    async def _retried(self, write: Write[T], failure: str) -> T:
        """A turn's start or end: tried again a moment later when it fails (its connection may have died;
        the write functions recognise their own earlier commit)."""
        for pause in FINAL_WRITE_BACKOFF_S:
            try:
                return await self._write(write, failure)
            except DatabaseFailed:
                log.warning("%s failed; trying again in %.2fs", type(write).__name__, pause)
            await asyncio.sleep(pause)
        return await self._write(write, failure)

    async def _write(self, write: Write[T], failure: str, timed: bool = True) -> T:
        started = time.perf_counter() if timed else None
        try:
            return await self._writer.run(write)
        except ParleyError:
            raise  # a refusal (session_not_found, …) or the writer's own DatabaseFailed
        except Exception as exc:  # SQLAlchemy's, and what drivers raise past it (asyncpg's, OSError)
            raise DatabaseFailed(failure) from exc
        finally:
            if started is not None:
                self.metrics.db_write(time.perf_counter() - started)

    async def close(self) -> None:
        """Finish the queued writes and stop the writer; the engine is the caller's to dispose."""
        await self._writer.close()

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
