"""Server processes, their leases and the answers they own: the store side of parley/recovery.py.

Times are seconds since the epoch on the database's clock where it has one (PostgreSQL's, so processes on
hosts whose clocks disagree still agree on who is late), else on this host's (SQLite is one host's anyway).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from parley.store.tables import Message, ServerProcess, utcnow

_processes = cast("Table", ServerProcess.__table__)
_messages = cast("Table", Message.__table__)
# A literal, not a parameter: so both databases use the partial index over streaming answers (0004).
STREAMING = text("chat_messages.status = 'streaming'")
INTERRUPTED = "interrupted"


def db_now(conn: Connection) -> ColumnElement[float]:
    """Now, in seconds since the epoch, on the database's clock (PostgreSQL) or this host's (SQLite)."""
    if conn.dialect.name == "postgresql":
        return cast("ColumnElement[float]", func.extract("epoch", func.clock_timestamp()))
    return cast("ColumnElement[float]", (func.julianday("now") - 2440587.5) * 86400.0)


@dataclass(frozen=True)
class ProcessInfo:
    """Who this process is, as other processes will read it."""

    id: str
    host: str
    pid: int
    host_key: str | None
    pid_started: str | None


@dataclass(frozen=True)
class Renew:
    """Renew this process's lease (registering it when its row is missing: the first time, or after a
    pause long enough that another process took it for dead and removed it)."""

    me: ProcessInfo

    def __call__(self, conn: Connection) -> None:
        now = db_now(conn)
        renewed = conn.execute(
            update(_processes).where(_processes.c.id == self.me.id).values(heartbeat_at=now)
        )
        if renewed.rowcount == 0:
            row = {
                "id": self.me.id,
                "host": self.me.host,
                "pid": self.me.pid,
                "host_key": self.me.host_key,
                "pid_started": self.me.pid_started,
            }
            conn.execute(insert(_processes).values(**row, started_at=now, heartbeat_at=now))


@dataclass(frozen=True)
class ListProcesses:
    """Every registered process, for the check of which ones on this host have died."""

    def __call__(self, conn: Connection) -> Sequence[Any]:
        columns = (_processes.c.id, _processes.c.host_key, _processes.c.pid, _processes.c.pid_started)
        return conn.execute(select(*columns)).all()


@dataclass(frozen=True)
class CloseOrphans:
    """Close every streaming answer whose owner holds no live lease: status ``error``, error code
    ``interrupted``, content as last stored. Returns how many.

    An owner is alive when its lease was renewed within ``lease_s`` and it is not one of ``dead`` (processes
    of this host known to have exited). It is one statement, so a process that registers and starts a turn
    meanwhile is never taken for dead: its answer row is newer than the statement's view. Answers from
    before owners were recorded (no ``owner_id``) are closed once they have not been written for
    ``legacy_before``. Then the rows of dead processes are removed.
    """

    lease_s: float
    dead: tuple[str, ...]
    legacy_before: datetime

    def __call__(self, conn: Connection) -> int:
        cutoff = db_now(conn) - self.lease_s
        alive = select(_processes.c.id).where(_processes.c.heartbeat_at >= cutoff)
        if self.dead:
            alive = alive.where(_processes.c.id.not_in(self.dead))
        owner = _messages.c.owner_id
        orphaned = or_(
            and_(owner.is_(None), _messages.c.updated_at < self.legacy_before),
            and_(owner.is_not(None), owner.not_in(alive)),
        )
        closed = conn.execute(
            update(_messages)
            .where(STREAMING, orphaned)
            .values(status="error", error_code=INTERRUPTED, updated_at=utcnow())
        ).rowcount
        gone = _processes.c.heartbeat_at < cutoff
        if self.dead:
            gone = or_(gone, _processes.c.id.in_(self.dead))
        conn.execute(delete(_processes).where(gone))
        return int(closed)


@dataclass(frozen=True)
class Retire:
    """This process stops: its row goes (its turns have ended, so it owns no streaming answer)."""

    me: str

    def __call__(self, conn: Connection) -> None:
        conn.execute(delete(_processes).where(_processes.c.id == self.me))


@dataclass(frozen=True)
class CloseFromLog:
    """Close an answer whose process died, with the text its turn's log holds (all that was streamed, not
    just the last checkpoint): status ``error``, error code ``interrupted``. Also over an answer the sweep
    closed from its checkpoint meanwhile. An answer its process finished is left as it is. Returns the
    answer's status and error code after, or None when there is no such answer (deleted)."""

    message_id: uuid.UUID
    content: str | None  # None: keep the stored content (a log that no longer holds the answer's start)
    reasoning: str | None
    seq: int  # the turn's last event that ``content`` reflects

    def __call__(self, conn: Connection) -> tuple[str, str | None] | None:
        closed_from_checkpoint = and_(_messages.c.status == "error", _messages.c.error_code == INTERRUPTED)
        values: dict[str, Any] = {"status": "error", "error_code": INTERRUPTED, "updated_at": utcnow()}
        if self.content is not None:
            values |= {"content": self.content, "reasoning": self.reasoning, "stream_seq": self.seq}
        conn.execute(
            update(_messages)
            .where(_messages.c.id == self.message_id, or_(STREAMING, closed_from_checkpoint))
            .values(**values)
        )
        row = conn.execute(
            select(_messages.c.status, _messages.c.error_code).where(_messages.c.id == self.message_id)
        ).first()
        return None if row is None else (str(row.status), row.error_code)
