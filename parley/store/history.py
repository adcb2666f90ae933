"""The history side of the store: list, read, rename, tag and delete sessions; switch and prune branches.

Every function takes the customer id and raises ``SessionNotFound`` for a session that is not theirs
(unknown and foreign look the same), ``MessageNotFound`` for a message not in that session.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    and_,
    delete,
    func,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from parley.errors import DatabaseFailed, MessageNotFound, SessionNotFound
from parley.store.db import DbSession, WriteGate, read_retried
from parley.store.pagination import SessionCursor
from parley.store.tables import ChatSession, Message, SessionTag, UTCDateTime, utcnow
from parley.store.tree import Tree, ordered

DELETE_CHUNK = 500
T = TypeVar("T")


@dataclass(frozen=True)
class SessionFilters:
    title: str | None = None  # case-insensitive substring of the title
    tag: str | None = None
    since: datetime | None = None  # last message at or after
    until: datetime | None = None  # last message before

    def key(self) -> list[str | None]:
        times = [t.isoformat() if t else None for t in (self.since, self.until)]
        return [self.title, self.tag, *times]


@dataclass(frozen=True)
class SessionRow:
    session: ChatSession
    tags: list[str]
    last_message_at: datetime


@dataclass(frozen=True)
class SessionView:
    """A session as the client shows it: the active branch's path and each message's siblings."""

    session: ChatSession
    tags: list[str]
    path: list[Message]
    siblings: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=dict)

    @property
    def active_leaf_id(self) -> uuid.UUID | None:
        return self.path[-1].id if self.path else None


class History:
    """Reads and edits of a customer's sessions. Database failures surface as ``DatabaseFailed``."""

    def __init__(
        self, sessions: async_sessionmaker[DbSession], engine: AsyncEngine, writing: WriteGate
    ) -> None:
        self._sessions = sessions
        self.engine = engine
        self._writing = writing

    async def read(self, read: Callable[[DbSession], Awaitable[T]]) -> T:
        """Run ``read`` in a database session, once more on a fresh connection when the pooled one turned
        out dead (see ``read_retried``); failures become ``DatabaseFailed``."""
        return await read_retried(self._sessions, read, "The history could not be read.")

    @asynccontextmanager
    async def db(self, write: bool = False) -> AsyncIterator[DbSession]:
        """A database session (in a transaction when ``write``); failures become ``DatabaseFailed``.
        Reads go through ``read`` instead, which survives a dead pooled connection."""
        try:
            if write:
                async with self._writing(), self._sessions() as db, db.begin():
                    yield db
            else:
                async with self._sessions() as db:
                    yield db
        except SQLAlchemyError as exc:
            raise DatabaseFailed("The history could not be read or changed.") from exc

    # -- listing -----------------------------------------------------------------------------------

    async def list_sessions(
        self, customer_id: str, filters: SessionFilters, limit: int, cursor: SessionCursor | None
    ) -> tuple[list[SessionRow], SessionCursor | None]:
        """Newest activity first, as of the cursor's snapshot (the first page's time).

        A session's activity is the time of its last message created up to the snapshot, so sessions
        that get messages while a client pages keep their place: no repeats, no gaps.
        """
        snapshot = cursor.snapshot if cursor else utcnow()
        activity = _activity(snapshot)
        query = select(ChatSession, activity).where(
            ChatSession.customer_id == customer_id, ChatSession.created_at <= snapshot, *_filters(filters)
        )
        if filters.since is not None:
            query = query.where(activity >= filters.since)
        if filters.until is not None:
            query = query.where(activity < filters.until)
        if cursor is not None:
            query = query.where(
                or_(
                    activity < cursor.activity,
                    and_(activity == cursor.activity, ChatSession.id < cursor.session_id),
                )
            )
        query = query.order_by(activity.desc(), ChatSession.id.desc()).limit(limit + 1)

        async def read(db: DbSession) -> tuple[list[Any], dict[uuid.UUID, list[str]]]:
            found = list((await db.execute(query)).all())
            return found, await tags_of(db, [row[0].id for row in found[:limit]])

        found, tags = await self.read(read)
        rows = [SessionRow(s, tags.get(s.id, []), at) for s, at in found[:limit]]
        more = len(found) > limit
        last = rows[-1] if rows and more else None
        return rows, SessionCursor(snapshot, last.last_message_at, last.session.id) if last else None

    # -- one session -------------------------------------------------------------------------------

    async def view(self, customer_id: str, session_id: uuid.UUID) -> SessionView:
        async def read(db: DbSession) -> SessionView:
            return await _view(db, await owned(db, customer_id, session_id))

        return await self.read(read)

    async def update(
        self, customer_id: str, session_id: uuid.UUID, title: str | None, tags: Sequence[str] | None
    ) -> SessionRow:
        """Rename and/or replace the tags."""
        async with self.db(write=True) as db:
            session = await owned(db, customer_id, session_id)
            if title is not None:
                session.title = title
            session.updated_at = utcnow()
            if tags is not None:
                await db.execute(delete(SessionTag).where(SessionTag.session_id == session_id))
                db.add_all(SessionTag(session_id=session_id, tag=t) for t in dict.fromkeys(tags))
            await db.flush()
            last = await db.scalar(
                select(func.max(Message.created_at)).where(Message.session_id == session_id)
            )
            found = await tags_of(db, [session_id])
        return SessionRow(session, found.get(session_id, []), last or session.created_at)

    async def set_title_if(self, session_id: uuid.UUID, expected: str, title: str) -> bool:
        """Retitle unless someone renamed the session meanwhile (its title is no longer ``expected``)."""
        async with self.db(write=True) as db:
            changed = await db.scalar(
                update(ChatSession)
                .where(ChatSession.id == session_id, ChatSession.title == expected)
                .values(title=title)
                .returning(ChatSession.id)
            )
        return changed is not None

    async def delete(self, customer_id: str, session_id: uuid.UUID) -> None:
        """Delete the session; its messages and tags go with it (ON DELETE CASCADE)."""
        async with self.db(write=True) as db:
            deleted = await db.scalar(
                delete(ChatSession)
                .where(ChatSession.id == session_id, ChatSession.customer_id == customer_id)
                .returning(ChatSession.id)
            )
        if deleted is None:
            raise SessionNotFound

    # -- branches ----------------------------------------------------------------------------------

    async def switch(self, customer_id: str, session_id: uuid.UUID, message_id: uuid.UUID) -> SessionView:
        """Make the branch through ``message_id`` active: its leaf is reached by the newest child."""
        async with self.db(write=True) as db:
            session = await owned(db, customer_id, session_id, lock=True)
            tree = Tree.of(await messages_of(db, session_id))
            if message_id not in tree.nodes:
                raise MessageNotFound
            session.active_leaf_id = tree.deepest(message_id)
            await db.flush()
            return await _view(db, session, tree)

    async def delete_subtree(
        self, customer_id: str, session_id: uuid.UUID, message_id: uuid.UUID
    ) -> list[uuid.UUID]:
        """Delete a message and everything below it; an active leaf inside it moves to the parent's branch.
        Returns the ids deleted."""
        async with self.db(write=True) as db:
            session = await owned(db, customer_id, session_id, lock=True)
            rows = await messages_of(db, session_id)
            tree = Tree.of(rows)
            if message_id not in tree.nodes:
                raise MessageNotFound
            doomed = set(tree.subtree(message_id))
            if tree.active_path(session.active_leaf_id)[-1] in doomed:
                rest = Tree.of(r for r in rows if r.id not in doomed)
                session.active_leaf_id = rest.deepest(tree.parent(message_id))
            session.updated_at = utcnow()
            ids = list(doomed)
            for start in range(0, len(ids), DELETE_CHUNK):
                await db.execute(delete(Message).where(Message.id.in_(ids[start : start + DELETE_CHUNK])))
        return ids


def _activity(snapshot: datetime) -> ColumnElement[datetime]:
    """A session's last message time as of ``snapshot`` (its creation time if it had none then)."""
    last = (
        select(func.max(Message.created_at))
        .where(Message.session_id == ChatSession.id, Message.created_at <= snapshot)
        .correlate(ChatSession)
        .scalar_subquery()
    )
    return type_coerce(func.coalesce(last, ChatSession.created_at), UTCDateTime).label("activity")


def _filters(filters: SessionFilters) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if filters.title:
        where.append(ChatSession.title.icontains(filters.title, autoescape=True))
    if filters.tag:
        tagged = select(SessionTag.session_id).where(
            SessionTag.session_id == ChatSession.id, SessionTag.tag == filters.tag
        )
        where.append(tagged.exists())
    return where


async def owned(db: DbSession, customer_id: str, session_id: uuid.UUID, lock: bool = False) -> ChatSession:
    mine = (ChatSession.id == session_id, ChatSession.customer_id == customer_id)
    if lock:
        # A no-op write takes the session's row lock (PostgreSQL) or the write lock (SQLite) first, as
        # start_turn does: a branch edit and a turn starting on the same session run one after the other.
        touch = update(ChatSession).where(*mine).values(active_leaf_id=ChatSession.active_leaf_id)
        touched = touch.returning(ChatSession.id).execution_options(synchronize_session=False)
        if await db.scalar(touched) is None:
            raise SessionNotFound
    found: ChatSession | None = await db.scalar(select(ChatSession).where(*mine))
    if found is None:
        raise SessionNotFound
    return found


async def messages_of(db: DbSession, session_id: uuid.UUID) -> Sequence[Message]:
    result = await db.scalars(
        select(Message).where(Message.session_id == session_id).order_by(Message.created_at, Message.id)
    )
    return result.all()


async def tags_of(db: DbSession, session_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    if not session_ids:
        return {}
    rows = await db.execute(
        select(SessionTag.session_id, SessionTag.tag)
        .where(SessionTag.session_id.in_(session_ids))
        .order_by(SessionTag.tag)
    )
    found: dict[uuid.UUID, list[str]] = {}
    for session_id, tag in rows:
        found.setdefault(session_id, []).append(tag)
    return found


async def _view(db: DbSession, session: ChatSession, tree: Tree | None = None) -> SessionView:
    tree = tree or Tree.of(await messages_of(db, session.id))
    path = tree.active_path(session.active_leaf_id)
    tags = await tags_of(db, [session.id])
    siblings = {node: tree.siblings(node) for node in path}
    return SessionView(session, tags.get(session.id, []), ordered(list(tree.nodes.values()), path), siblings)
