"""SQLAlchemy Core statements compiled once and run straight on SQLite's DBAPI cursor: the writer's hot path.

A turn's writes are a handful of fixed statements. Through ``Connection.execute`` each costs about 40 µs
of SQLAlchemy's per-execution work (an execution context, event dispatch, a result object) on top of
SQLite's own few microseconds, which made SQLAlchemy the largest single cost of a turn in the profile.
Here a statement is compiled once per set of parameter names, with SQLAlchemy's own bind and result
processors (so values are stored exactly as ``Connection.execute`` would store them: the same UUID and
datetime formats, JSON encoding), and then each execution is the cursor call alone.

For SQLite (``qmark`` parameters) and asyncpg (``$1``: its cursor adapter prepares each statement once per
connection), on a connection whose transaction SQLAlchemy already manages; other drivers go through
``Connection.execute`` unchanged. ``before_cursor_execute`` listeners still see each statement.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement, Select
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

Processor = Callable[[Any], Any] | None
Params = Mapping[str, Any]


class Prepared:
    """One statement for one set of parameter names, ready for the raw cursor."""

    def __init__(self, statement: ClauseElement, dialect: Dialect, keys: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        assert isinstance(compiled, SQLCompiler)
        if compiled.insert_prefetch or compiled.update_prefetch:
            raise ValueError("a prepared statement cannot fill in Python-side column defaults")
        self.sql = compiled.string
        names = compiled.positiontup or []
        self._binds = [(name, _bind(compiled.binds[name].type, dialect)) for name in names]
        self.row: Callable[..., Any] | None = None
        self._results: list[Processor] = []
        if isinstance(statement, Select):
            columns = list(statement.selected_columns)
            self.row = namedtuple("Row", [c.key for c in columns])  # type: ignore[misc]
            self._results = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]

    def args(self, params: Params) -> list[Any]:
        return [params[name] if proc is None else proc(params[name]) for name, proc in self._binds]

    def rows(self, raw: Sequence[Sequence[Any]]) -> list[Any]:
        assert self.row is not None
        procs = self._results
        return [
            self.row(*(v if p is None else p(v) for p, v in zip(procs, values, strict=True)))
            for values in raw
        ]


def _bind(type_: TypeEngine[Any], dialect: Dialect) -> Processor:
    # The dialect's own implementation of the type, as ``Connection.execute`` uses (a TypeDecorator's
    # processing is composed with its dialect-specific impl's).
    return type_.dialect_impl(dialect).bind_processor(dialect)


class Statements:
    """Prepared statements of one connection's dialect, by statement and parameter names."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str, tuple[str, ...]], tuple[ClauseElement, Prepared]] = {}

    def prepare(self, conn: Connection, statement: ClauseElement, params: Params) -> Prepared:
        key = (id(statement), conn.dialect.name, tuple(params))
        hit = self._cache.get(key)
        if hit is None or hit[0] is not statement:
            hit = self._cache[key] = (statement, Prepared(statement, conn.dialect, list(params)))
        return hit[1]

    def rows(self, conn: Connection, statement: ClauseElement, params: Params) -> list[Any]:
        """A SELECT's rows, with attribute access as ``Row`` objects have."""
        prepared = self.prepare(conn, statement, params)
        return prepared.rows(self._run(conn, prepared, "execute", prepared.args(params))[0])

    def execute(self, conn: Connection, statement: ClauseElement, params: Params) -> int:
        """Run a write; return the number of rows it matched."""
        prepared = self.prepare(conn, statement, params)
        return self._run(conn, prepared, "execute", prepared.args(params))[1]

    def executemany(self, conn: Connection, statement: ClauseElement, rows: Sequence[Params]) -> None:
        prepared = self.prepare(conn, statement, rows[0])
        self._run(conn, prepared, "executemany", [prepared.args(row) for row in rows])

    @staticmethod
    def _run(conn: Connection, prepared: Prepared, method: str, args: Any) -> tuple[list[Any], int]:
        dbapi = conn.dialect.loaded_dbapi
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        if conn._has_events or conn.engine._has_events:  # listeners see the statement as SQLAlchemy's own
            conn.dispatch.before_cursor_execute(
                conn, cursor, prepared.sql, args, None, method == "executemany"
            )
        try:
            getattr(cursor, method)(prepared.sql, args)
            rows = list(cursor.fetchall()) if prepared.row is not None else []
            return rows, cursor.rowcount
        except dbapi.Error as exc:  # as SQLAlchemy would raise it (IntegrityError, OperationalError, ...)
            raise DBAPIError.instance(prepared.sql, args, exc, dbapi.Error, hide_parameters=True) from exc
        finally:
            cursor.close()
