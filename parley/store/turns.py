"""A turn's own writes, the database side of the hot path: start, checkpoint, finish.

Each is a function of a synchronous ``Connection`` for a ``Writer`` to run (see ``writer.py``), written in
SQLAlchemy Core with statements built once: no ORM unit of work, no identity map, and as few statements
as the turn needs. Starting a turn in a new session is two inserts; continuing one is one read (the
session, locked, with its messages) and two writes; finishing is two updates.

Each names its ``lane_key`` (the row it locks first), which keeps writes to one session in one writer
lane on PostgreSQL. Every function reads before it writes and raises its refusals (``session_not_found``,
a branch target not in the session) before its first write, as the writer's batches require.

An agentic turn also writes its answer's ``tool_steps`` (JSON) at step checkpoints and at the end; a turn
without tools runs exactly the statements it ran before and never touches that column.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, exists, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ClauseElement, Executable, Select, Update

from parley.errors import SessionNotFound
from parley.store.branches import ContextMessage, Placement, check_branch_request, place
from parley.store.prepared import Statements
from parley.store.tables import ChatSession, Message, utcnow

TITLE_CHARS = 80

_sessions = cast("Table", ChatSession.__table__)
_messages = cast("Table", Message.__table__)

INSERT_SESSION = insert(_sessions)
INSERT_MESSAGES = insert(_messages)
# The session, locked, with its messages: one statement (one round trip on PostgreSQL). A session without
# messages gives one row whose message columns are null; an unknown or another customer's session, none.
SESSION_TREE = (
    select(
        _sessions.c.active_leaf_id,
        _messages.c.id,
        _messages.c.parent_id,
        _messages.c.role,
        _messages.c.content,
        _messages.c.created_at,
        _messages.c.tool_steps,  # null but for agentic answers: the next turn's context replays their steps
    )
    .select_from(_sessions.outerjoin(_messages, _messages.c.session_id == _sessions.c.id))
    .where(_sessions.c.id == bindparam("sid"), _sessions.c.customer_id == bindparam("cid"))
    .with_for_update(
        of=_sessions
    )  # PostgreSQL: turns on one session start one after the other (SQLite: one writer)
)
MOVE_LEAF = (
    update(_sessions)
    .where(_sessions.c.id == bindparam("sid"))
    .values(active_leaf_id=bindparam("leaf"), updated_at=bindparam("now"))
)
TOUCH_SESSION = (
    update(_sessions).where(_sessions.c.id == bindparam("sid")).values(updated_at=bindparam("now"))
)
# Checkpoints and the final write touch only an answer still ``streaming``: once recovery has closed it as
# interrupted (its server was taken for dead), a late write from that server changes nothing.
_STILL_STREAMING = (_messages.c.id == bindparam("mid"), text("status = 'streaming'"))
SAVE_ANSWER = (
    update(_messages)
    .where(*_STILL_STREAMING)
    .values(
        content=bindparam("content"),
        reasoning=bindparam("reasoning"),
        stream_seq=bindparam("seq"),
        updated_at=bindparam("now"),
    )
)
FINISH_ANSWER = (
    update(_messages)
    .where(*_STILL_STREAMING)
    .values(
        content=bindparam("content"),
        reasoning=bindparam("reasoning"),
        status=bindparam("status"),
        usage=bindparam("usage"),
        error_code=bindparam("error_code"),
        stream_seq=bindparam("seq"),
        updated_at=bindparam("now"),
    )
)
ANSWER_EXISTS = select(_messages.c.id).where(_messages.c.id == bindparam("mid"))
# What a final write finds when it matched no streaming row: its own earlier attempt (committed, the reply
# lost), recovery's close, or nothing (the session was deleted).
ANSWER_STATE = select(
    _messages.c.status, _messages.c.error_code, _messages.c.stream_seq, _messages.c.content
).where(_messages.c.id == bindparam("mid"))
# The same with the answer's tool steps: only agentic turns write the column (and pay for its JSON).
SAVE_TOOL_ANSWER = SAVE_ANSWER.values(tool_steps=bindparam("steps"))
FINISH_TOOL_ANSWER = FINISH_ANSWER.values(tool_steps=bindparam("steps"))


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


@dataclass(frozen=True)
class StartTurn:
    """A turn to start: a new session (``session_id`` None, with ``imported`` history) or a next turn."""

    customer_id: str
    session_id: uuid.UUID | None
    prompt: str
    model: str
    provider: str
    request_id: str
    imported: Sequence[ContextMessage] = ()
    edit_of: str | None = None
    regenerate: str | None = None
    owner_id: str | None = None  # the server process that streams the answer (parley/recovery.py)
    # Made up front, so every statement can name them and a retried batch writes the same rows.
    ids: list[uuid.UUID] = field(default_factory=list)
    # What the last attempt wrote: if it committed but its reply was lost, a retry returns it unchanged.
    made: list[TurnRecord] = field(default_factory=list)

    @property
    def lane_key(self) -> uuid.UUID | None:
        return self.session_id

    def __call__(self, conn: Connection) -> TurnRecord:
        check_branch_request(self.session_id, self.edit_of, self.regenerate)
        if self.made:
            if _rows(conn, ANSWER_EXISTS, {"mid": self.made[-1].ai_message_id}):
                return self.made[-1]  # an earlier attempt committed; only its reply was lost
            self.made.clear()  # it was rolled back: write again (the same ids)
        record = self._write(conn)
        self.made.append(record)
        return record

    def _write(self, conn: Connection) -> TurnRecord:
        now = utcnow()
        if self.session_id is None:
            return self._new_session(conn, now)
        found = _rows(conn, SESSION_TREE, {"sid": self.session_id, "cid": self.customer_id})
        if not found:
            raise SessionNotFound
        # Rows of the columns the tree reads (id, parent_id, role, content, created_at, tool_steps), not
        # ORM objects.
        rows = cast("Sequence[Message]", [row for row in found if row.id is not None])
        leaf = found[0].active_leaf_id
        where = place(rows, leaf, self.prompt, self.edit_of, self.regenerate)  # may refuse: no write yet
        turn = self._messages(self.session_id, where, (), now)
        moved = {"sid": self.session_id, "leaf": turn[-1]["id"], "now": now}
        if _postgres(conn):  # one statement, one round trip
            statement, params = _inserting(turn)
            _execute(conn, statement, {**params, **moved})
        else:
            _execute_many(conn, INSERT_MESSAGES, turn)
            _execute(conn, MOVE_LEAF, moved)
        return self._record(self.session_id, where, turn, new_session=False)

    def _new_session(self, conn: Connection, now: datetime) -> TurnRecord:
        session_id = self._id(0)
        where = Placement(None, [], self.prompt)
        turn = self._messages(session_id, where, self.imported, now)
        session = {
            "id": session_id,
            "customer_id": self.customer_id,
            "title": title_from(self.prompt),
            "created_at": now,
            "updated_at": now,
            "active_leaf_id": turn[-1]["id"],
        }
        if _postgres(conn):  # one statement (the messages' key on the session is checked at its end)
            statement, params = _inserting(turn, session)
            _execute(conn, statement, params)
        else:
            _execute(conn, INSERT_SESSION, session)
            _execute_many(conn, INSERT_MESSAGES, turn)
        return self._record(session_id, where, turn, new_session=True)

    def _messages(
        self, session_id: uuid.UUID, where: Placement, imported: Sequence[ContextMessage], now: datetime
    ) -> list[dict[str, Any]]:
        """Imported history (new sessions), the question (unless regenerating) and the empty answer row,
        each the child of the one before and a microsecond after it (so they sort in this order)."""
        common = {
            "session_id": session_id,
            "customer_id": self.customer_id,
            "request_id": self.request_id,
            "reasoning": None,
            "error_code": None,
            "status": "completed",
            "model": None,
            "provider": None,
            "owner_id": None,
            "stream_seq": None,
        }
        turn = [{**common, "role": m.role, "content": m.content} for m in imported]
        if not where.question:
            turn.append({**common, "role": "user", "content": self.prompt})
        answer = {"role": "assistant", "content": "", "status": "streaming", "owner_id": self.owner_id}
        turn.append({**common, **answer, "model": self.model, "provider": self.provider})
        parent: object = where.parent
        for offset, message in enumerate(turn):
            message["id"] = self._id(offset + 1)
            message["parent_id"] = parent
            message["created_at"] = message["updated_at"] = now + timedelta(microseconds=offset)
            parent = message["id"]
        return turn

    def _id(self, index: int) -> uuid.UUID:
        while len(self.ids) <= index:
            self.ids.append(uuid.uuid4())
        return self.ids[index]

    @staticmethod
    def _record(
        session_id: uuid.UUID, where: Placement, turn: list[dict[str, Any]], new_session: bool
    ) -> TurnRecord:
        question = where.question or turn[-2]["id"]
        return TurnRecord(
            session_id, question, turn[-1]["id"], where.history, where.prompt, new_session=new_session
        )


@dataclass(frozen=True)
class SaveAnswer:
    """A checkpoint: the answer so far (and an agentic turn's steps so far) as of the turn's event ``seq``;
    the row stays ``streaming``."""

    message_id: uuid.UUID
    content: str
    reasoning: str | None
    seq: int | None = None
    tool_steps: list[dict[str, Any]] | None = None  # None leaves the column as it is

    @property
    def lane_key(self) -> uuid.UUID:
        return self.message_id

    def __call__(self, conn: Connection) -> None:
        params = {"mid": self.message_id, "content": self.content, "reasoning": self.reasoning}
        params |= {"seq": self.seq, "now": utcnow()}
        if self.tool_steps is None:
            _execute(conn, SAVE_ANSWER, params)
        else:
            _execute(conn, SAVE_TOOL_ANSWER, {**params, "steps": self.tool_steps})


@dataclass(frozen=True)
class FinishTurn:
    """The final answer with its status and usage; the session's activity time moves on.

    Returns False when the answer was no longer ``streaming`` (recovery closed it as interrupted): then
    nothing is written. An answer that is gone (its session was deleted meanwhile) counts as written.
    """

    session_id: uuid.UUID
    message_id: uuid.UUID
    content: str
    reasoning: str | None
    status: str
    usage: dict[str, Any] | None
    error_code: str | None
    seq: int | None = None
    tool_steps: list[dict[str, Any]] | None = None  # an agentic turn's steps; None leaves the column be

    @property
    def lane_key(self) -> uuid.UUID:
        return self.session_id

    def __call__(self, conn: Connection) -> bool:
        touch = {"sid": self.session_id, "now": utcnow()}
        params = {"mid": self.message_id, "content": self.content, "reasoning": self.reasoning, **touch}
        params |= {"status": self.status, "usage": self.usage, "error_code": self.error_code, "seq": self.seq}
        tools = self.tool_steps is not None
        if tools:
            params["steps"] = self.tool_steps
        if _postgres(conn):  # the answer, and the session's time if it matched: one statement
            if _execute(conn, FINISH_AND_TOUCH[tools], params):
                return True
        elif _execute(conn, FINISH_TOOL_ANSWER if tools else FINISH_ANSWER, params):
            _execute(conn, TOUCH_SESSION, touch)
            return True
        found = _rows(conn, ANSWER_STATE, {"mid": self.message_id})
        if not found:
            return True  # gone: its session was deleted meanwhile
        if tuple(found[0]) != (self.status, self.error_code, self.seq, self.content):
            return False  # closed by recovery meanwhile
        # Else this very write, committed by an earlier attempt whose reply was lost.
        _execute(conn, TOUCH_SESSION, touch)
        return True


def _inserting(
    turn: list[dict[str, Any]], session: dict[str, Any] | None = None
) -> tuple[Executable, dict[str, Any]]:
    """PostgreSQL: one statement that inserts the turn's messages and either inserts the new ``session`` or
    moves the session's leaf (``MOVE_LEAF``'s parameters are the caller's); with its parameters."""
    params = {f"{key}_{n}": value for n, row in enumerate(turn) for key, value in row.items()}
    if session is not None:
        params |= {f"s_{key}": value for key, value in session.items()}
    return _turn_insert(tuple(turn[0]), len(turn), tuple(session or ())), params


@functools.lru_cache(maxsize=32)
def _turn_insert(keys: tuple[str, ...], rows: int, session: tuple[str, ...]) -> Executable:
    """Built once per shape (a statement of literal values would be compiled again at every execution)."""
    values = [{k: bindparam(f"{k}_{n}", type_=_messages.c[k].type) for k in keys} for n in range(rows)]
    added = insert(_messages).values(values)
    if not session:
        return MOVE_LEAF.add_cte(added.cte("added"))
    made = insert(_sessions).values({k: bindparam(f"s_{k}", type_=_sessions.c[k].type) for k in session})
    return added.add_cte(made.cte("made"))


def _and_touch(finish: Update) -> Update:
    finished = finish.returning(_messages.c.id).cte("finished")
    return TOUCH_SESSION.where(exists(select(finished.c.id))).add_cte(finished)


FINISH_AND_TOUCH = {False: _and_touch(FINISH_ANSWER), True: _and_touch(FINISH_TOOL_ANSWER)}


def _postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


# The SQLite writer thread's statements, prepared once (see prepared.py); other drivers use ``execute``.
_PREPARED = Statements()


def _fast(conn: Connection) -> bool:
    return conn.dialect.driver in ("pysqlite", "asyncpg")


def _rows(conn: Connection, statement: Select[Any], params: dict[str, Any]) -> Sequence[Any]:
    if _fast(conn):
        return _PREPARED.rows(conn, statement, params)
    return conn.execute(statement, params).all()


def _execute(conn: Connection, statement: Executable, params: dict[str, Any]) -> int:
    """Run a write; return the number of rows it matched."""
    if _fast(conn):
        return _PREPARED.execute(conn, cast("ClauseElement", statement), params)
    return conn.execute(statement, params).rowcount


def _execute_many(conn: Connection, statement: Executable, rows: list[dict[str, Any]]) -> None:
    if _fast(conn):
        _PREPARED.executemany(conn, cast("ClauseElement", statement), rows)
    else:
        conn.execute(statement, rows)


def title_from(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"
