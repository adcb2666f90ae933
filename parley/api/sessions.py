"""Sessions over REST: ``GET /api/v1/sessions/{session_id}`` with its messages in order."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel

from parley.api.deps import AppRuntime, CurrentCustomer
from parley.store.tables import Message

router = APIRouter(tags=["sessions"])


class MessageOut(BaseModel):
    id: uuid.UUID
    role: str
    content: str
    reasoning: str | None
    status: str
    model: str | None
    provider: str | None
    usage: dict[str, Any] | None
    request_id: str | None
    parent_id: uuid.UUID | None
    error_code: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Message) -> MessageOut:
        return cls.model_validate(row, from_attributes=True)


class SessionOut(BaseModel):
    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime
    messages: list[MessageOut]


@router.get("/sessions/{session_id}", responses={404: {"description": "No such session for this customer"}})
async def get_session(session_id: str, customer: CurrentCustomer, runtime: AppRuntime) -> SessionOut:
    """The session with every message, oldest first. 404 when it is not this customer's."""
    session = await runtime.store.find_session(customer.customer_id, session_id)
    if session is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Session not found.")
    rows = await runtime.store.session_messages(session.id)
    return SessionOut(
        id=session.id,
        title=session.title,
        created_at=session.created_at,
        updated_at=session.updated_at,
        messages=[MessageOut.of(row) for row in rows],
    )
