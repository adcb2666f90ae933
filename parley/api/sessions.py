"""Sessions over REST: list, read (the active branch), rename and tag, delete; switch and prune branches.

Every route is scoped to the token's customer: another customer's session, an unknown one and a malformed
id all get the same 404. See docs/history.md.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from parley.api.deps import AppRuntime, CurrentCustomer
from parley.api.errors import error_responses
from parley.api.schemas import (
    ActiveLeafIn,
    LiveLookup,
    SessionOut,
    SessionPage,
    SessionPatch,
    SessionSummary,
    Tag,
    Text,
    UtcDateTime,
)
from parley.errors import MessageNotFound, SessionNotFound
from parley.services import Runtime
from parley.store.history import SessionFilters, SessionView
from parley.store.pagination import decode_session_cursor, encode_session_cursor
from parley.store.repository import parse_uuid

router = APIRouter(tags=["sessions"])


async def live_lookup(runtime: Runtime, customer_id: str, view: SessionView) -> LiveLookup:
    """How the view's answers still streaming look now: from their turns here, or (with Redis) elsewhere."""
    live = {m.id: runtime.streams.live_answer(m.id) for m in view.path if m.status == "streaming"}
    elsewhere = [message_id for message_id, answer in live.items() if answer is None]
    if runtime.cluster is not None and elsewhere:
        live |= await runtime.cluster.live_answers(customer_id, elsewhere)
    return live.get


async def stop_writing(
    runtime: Runtime, customer_id: str, session_id: str | None, message_ids: list[uuid.UUID]
) -> None:
    """Stop the turns writing deleted answers: here, and (with Redis) on every other process."""
    runtime.streams.stop_writing(customer_id, session_id, message_ids)
    if runtime.cluster is not None:
        await runtime.cluster.stop_writing(customer_id, session_id, message_ids)


def session_key(session_id: str) -> uuid.UUID:
    key = parse_uuid(session_id)
    if key is None:
        raise SessionNotFound
    return key


def message_key(message_id: str) -> uuid.UUID:
    key = parse_uuid(message_id)
    if key is None:
        raise MessageNotFound
    return key


@router.get("/sessions", responses=error_responses(400))
async def list_sessions(
    customer: CurrentCustomer,
    runtime: AppRuntime,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the previous page")
    ] = None,
    q: Annotated[Text | None, Query(max_length=200, description="Title contains (any case)")] = None,
    tag: Annotated[Tag | None, Query(description="Only sessions with this tag")] = None,
    since: Annotated[UtcDateTime | None, Query(description="Last message at or after")] = None,
    until: Annotated[UtcDateTime | None, Query(description="Last message before")] = None,
) -> SessionPage:
    """Your sessions, newest activity (last message) first, ``limit`` at a time.

    Paging is stable: sessions that existed at the first page appear exactly once across the pages, even
    if they get messages meanwhile (they keep their first-page order). Send the same filters with a cursor.
    """
    filters = SessionFilters(title=q or None, tag=tag, since=since, until=until)
    position = decode_session_cursor(cursor, filters.key()) if cursor else None
    rows, after = await runtime.store.history.list_sessions(customer.customer_id, filters, limit, position)
    return SessionPage(
        items=[SessionSummary.of(row) for row in rows],
        next_cursor=encode_session_cursor(after, filters.key()) if after else None,
    )


@router.get("/sessions/{session_id}", responses=error_responses(404))
async def get_session(session_id: str, customer: CurrentCustomer, runtime: AppRuntime) -> SessionOut:
    """The session with the messages of its active branch, root first, each with its sibling ids.

    An answer still streaming shows what its turn has sent so far, with the ``seq`` of the last event that
    includes: render it, then ``resume`` with ``after_seq`` = ``seq`` (docs/protocol.md section 5).
    """
    view = await runtime.store.history.view(customer.customer_id, session_key(session_id))
    return SessionOut.of(view, await live_lookup(runtime, customer.customer_id, view))


@router.patch("/sessions/{session_id}", responses=error_responses(400, 404))
async def update_session(
    session_id: str, patch: SessionPatch, customer: CurrentCustomer, runtime: AppRuntime
) -> SessionSummary:
    """Rename (``title``) and/or replace the tags (``tags``); fields left out are unchanged."""
    row = await runtime.store.history.update(
        customer.customer_id, session_key(session_id), patch.title, patch.tags
    )
    return SessionSummary.of(row)


@router.delete(
    "/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404)
)
async def delete_session(session_id: str, customer: CurrentCustomer, runtime: AppRuntime) -> Response:
    """Delete the session and all its messages. Turns still streaming into it are stopped: they end as a
    cancel ends them, their ``cancelled`` event saying ``session_deleted``."""
    key = session_key(session_id)
    await runtime.store.history.delete(customer.customer_id, key)
    await stop_writing(runtime, customer.customer_id, str(key), [])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/sessions/{session_id}/active-leaf", responses=error_responses(400, 404))
async def switch_branch(
    session_id: str, body: ActiveLeafIn, customer: CurrentCustomer, runtime: AppRuntime
) -> SessionOut:
    """Show and continue the branch through ``message_id``: from it, the newest child is followed down.

    Answers the session as ``GET`` would, on its new branch. The next normal turn continues that leaf.
    """
    key, message = session_key(session_id), message_key(body.message_id)
    view = await runtime.store.history.switch(customer.customer_id, key, message)
    return SessionOut.of(view, await live_lookup(runtime, customer.customer_id, view))


@router.delete(
    "/sessions/{session_id}/messages/{message_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
)
async def delete_message(
    session_id: str, message_id: str, customer: CurrentCustomer, runtime: AppRuntime
) -> Response:
    """Delete the message and every message below it (its replies, their branches).

    If the active branch ran through it, the parent's newest remaining branch becomes active. An answer still
    streaming among them is stopped, as when its session is deleted.
    """
    key, message = session_key(session_id), message_key(message_id)
    deleted = await runtime.store.history.delete_subtree(customer.customer_id, key, message)
    await stop_writing(runtime, customer.customer_id, None, list(deleted))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
