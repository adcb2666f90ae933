"""Export a session whole (every branch) and import such an export as a new session of the caller's."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from parley.store.db import DbSession
from parley.store.history import History, messages_of, owned, tags_of
from parley.store.tables import ChatSession, Message, SessionTag, utcnow
from parley.store.tree import Tree

MARKDOWN_OUTPUT_CHARS = 500  # a tool's output is cut to this in Markdown (the JSON export has it whole)


class InvalidImport(ValueError):
    """The import's messages do not form a tree (unknown or later parent, repeated id)."""


@dataclass(frozen=True)
class SessionExport:
    session: ChatSession
    tags: list[str]
    messages: list[Message]  # every branch, oldest first; parents come before their children
    active_path: list[uuid.UUID]


@dataclass(frozen=True)
class ImportedMessage:
    id: str  # any text unique within the import; parent_id refers to it
    parent_id: str | None
    role: str
    content: str
    status: str = "completed"
    reasoning: str | None = None
    model: str | None = None
    provider: str | None = None
    usage: dict[str, Any] | None = None
    error_code: str | None = None
    created_at: datetime | None = None
    tool_steps: list[dict[str, Any]] | None = None  # an agentic answer's steps, as stored


@dataclass(frozen=True)
class ImportedSession:
    title: str
    messages: Sequence[ImportedMessage]
    tags: Sequence[str] = ()
    active_leaf_id: str | None = None
    created_at: datetime | None = None  # the import time when not given
    updated_at: datetime | None = None


async def export_session(history: History, customer_id: str, session_id: uuid.UUID) -> SessionExport:
    async def read(db: DbSession) -> tuple[ChatSession, list[Message], dict[uuid.UUID, list[str]]]:
        session = await owned(db, customer_id, session_id)
        return session, list(await messages_of(db, session_id)), await tags_of(db, [session_id])

    session, rows, tags = await history.read(read)
    tree = Tree.of(rows)
    return SessionExport(session, tags.get(session_id, []), rows, tree.active_path(session.active_leaf_id))


async def import_session(history: History, customer_id: str, data: ImportedSession) -> uuid.UUID:
    """Store ``data`` as a new session of ``customer_id`` with fresh ids; the tree shape is kept.

    A message still ``streaming`` in the export is stored ``cancelled`` (it will never finish here). The
    session's and the messages' times are kept; one not given is the time of the import.
    """
    now = utcnow()
    session = ChatSession(id=uuid.uuid4(), customer_id=customer_id, title=data.title)
    session.created_at = data.created_at or now
    session.updated_at = data.updated_at or now
    messages, ids = _messages_of(data.messages, session, now)
    leaf = ids.get(data.active_leaf_id) if data.active_leaf_id else None
    session.active_leaf_id = leaf or Tree.of(messages).newest()
    async with history.db(write=True) as db:
        db.add(session)
        await db.flush()
        db.add_all(messages)
        db.add_all(SessionTag(session_id=session.id, tag=t) for t in dict.fromkeys(data.tags))
    return session.id


def _messages_of(
    given: Sequence[ImportedMessage], session: ChatSession, now: datetime
) -> tuple[list[Message], dict[str, uuid.UUID]]:
    ids: dict[str, uuid.UUID] = {}
    positions: dict[str, int] = {}
    messages: list[Message] = []
    for offset, item in enumerate(given):
        if item.id in positions:  # the message's position, not its id: error bodies never echo input
            first = positions[item.id]
            raise InvalidImport(f"messages[{offset}].id: repeats the id of messages[{first}].")
        if item.parent_id is not None and item.parent_id not in ids:
            raise InvalidImport(f"messages[{offset}].parent_id: must name a message listed before it.")
        ids[item.id] = uuid.uuid4()
        positions[item.id] = offset
        created = item.created_at or now + timedelta(microseconds=offset)
        messages.append(
            Message(
                id=ids[item.id],
                session_id=session.id,
                customer_id=session.customer_id,
                parent_id=ids[item.parent_id] if item.parent_id is not None else None,
                role=item.role,
                content=item.content,
                reasoning=item.reasoning,
                status="cancelled" if item.status == "streaming" else item.status,
                model=item.model,
                provider=item.provider,
                usage=item.usage,
                error_code=item.error_code,
                tool_steps=item.tool_steps if item.role == "assistant" else None,
                created_at=created,
                updated_at=created,
            )
        )
    return messages, ids


def markdown(export: SessionExport) -> str:
    """The active branch as Markdown: a title, then one section per message."""
    by_id = {m.id: m for m in export.messages}
    lines = [f"# {_one_line(export.session.title) or 'Untitled'}", ""]
    lines.append(
        f"*Exported from Parley · session `{export.session.id}` · {_when(export.session.created_at)}*"
    )
    if export.tags:
        lines += ["", f"*Tags: {', '.join(export.tags)}*"]
    hidden = len(export.messages) - len(export.active_path)
    if hidden:
        lines += ["", f"*{hidden} message(s) on other branches are not shown.*"]
    for message_id in export.active_path:
        message = by_id[message_id]
        who = "User" if message.role == "user" else f"Assistant ({message.model or 'unknown model'})"
        status = "" if message.status == "completed" else f" · {message.status}"
        lines += ["", f"## {who} · {_when(message.created_at)}{status}", "", *_body(message)]
    return "\n".join(lines).rstrip() + "\n"


def _body(message: Message) -> list[str]:
    """The message's text; an agentic answer's tool calls and results are shown after each step's text."""
    steps = message.tool_steps if isinstance(message.tool_steps, list) else []
    if not steps:
        return [message.content]
    lines: list[str] = []
    for step in steps:
        text = str(step.get("text") or "")
        if text:
            lines += [text, ""]
        results = {str(r.get("call_id")): r for r in step.get("results") or []}
        for call in step.get("calls") or []:
            result = results.get(str(call.get("id")), {})
            verdict = "error" if result.get("is_error") else "result"
            lines.append(
                f"> **Tool** `{call.get('name')}` `{json.dumps(call.get('input'), ensure_ascii=False)}`"
            )
            lines.append(f"> {verdict}: {_one_line(str(result.get('output', '')))[:MARKDOWN_OUTPUT_CHARS]}")
            lines.append("")
    prefix = "".join(str(step.get("text") or "") for step in steps)
    content = message.content
    if content.startswith(prefix):
        final = content[len(prefix) :]
    else:  # content behind the steps (a server stopped mid-turn), or unrelated to them (an import)
        final = "" if prefix.startswith(content) else content
    return [*lines, final]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
