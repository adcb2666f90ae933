"""Export a session (JSON with every branch, or Markdown of the active branch) and import a JSON export."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

from parley.api.deps import AppRuntime, CurrentCustomer
from parley.api.errors import ApiError, error_responses
from parley.api.schemas import MAX_STEPS, SessionOut, Tag, Text, ToolStepOut, UtcDateTime
from parley.api.sessions import session_key
from parley.store.exchange import (
    ImportedMessage,
    ImportedSession,
    InvalidImport,
    SessionExport,
    export_session,
    import_session,
    markdown,
)
from parley.store.tables import utcnow

router = APIRouter(tags=["export"])

EXPORT_FORMAT: Literal["parley.session.v1"] = "parley.session.v1"
MAX_IMPORT_MESSAGES = 10_000
DEFAULT_IMPORT_TITLE = "Imported conversation"


class ExportedMessage(BaseModel):
    id: str = Field(min_length=1, max_length=100, description="Unique within the export")
    parent_id: str | None = Field(default=None, max_length=100, description="A message listed before it")
    role: Literal["user", "assistant"]
    content: Text
    status: Literal["streaming", "completed", "cancelled", "error"] = "completed"
    reasoning: Text | None = None
    model: Text | None = Field(default=None, max_length=255)
    provider: Text | None = Field(default=None, max_length=64)
    usage: dict[str, Any] | None = None
    error_code: Text | None = Field(default=None, max_length=64)
    created_at: UtcDateTime | None = None
    tool_steps: list[ToolStepOut] | None = Field(default=None, max_length=MAX_STEPS)


class ExportedSession(BaseModel):
    id: str | None = None
    title: Text = Field(default="", max_length=255)
    tags: list[Tag] = Field(default_factory=list, max_length=20)
    created_at: UtcDateTime | None = None
    updated_at: UtcDateTime | None = None
    active_leaf_id: str | None = Field(default=None, max_length=100)


class SessionExportBody(BaseModel):
    """A whole session: every branch, parents listed before their children (any number of them)."""

    format: Literal["parley.session.v1"] = EXPORT_FORMAT
    exported_at: UtcDateTime | None = None
    session: ExportedSession
    messages: list[ExportedMessage]


class SessionImportBody(SessionExportBody):
    """An export to store as a new session: at most ``MAX_IMPORT_MESSAGES`` messages."""

    messages: list[ExportedMessage] = Field(max_length=MAX_IMPORT_MESSAGES)

    @field_validator("messages", mode="before")
    @classmethod
    def _not_too_many(cls, value: Any) -> Any:
        """Counted before any message is validated, so an oversized import costs no models; refused as
        ``invalid_import`` (parley/api/validation.py) like an import that is not a tree."""
        if isinstance(value, list) and len(value) > MAX_IMPORT_MESSAGES:
            raise PydanticCustomError(
                "invalid_import",
                f"an import holds at most {MAX_IMPORT_MESSAGES:,} messages (this one has {len(value):,})",
            )
        return value


def _export_body(export: SessionExport) -> SessionExportBody:
    s = export.session
    leaf = export.active_path[-1] if export.active_path else None
    session = ExportedSession(
        id=str(s.id),
        title=s.title,
        tags=export.tags,
        created_at=s.created_at,
        updated_at=s.updated_at,
        active_leaf_id=str(leaf) if leaf else None,
    )
    messages = [
        ExportedMessage(
            id=str(m.id),
            parent_id=str(m.parent_id) if m.parent_id else None,
            role=m.role,
            content=m.content,
            status=m.status,
            reasoning=m.reasoning,
            model=m.model,
            provider=m.provider,
            usage=m.usage,
            error_code=m.error_code,
            created_at=m.created_at,
            tool_steps=m.tool_steps,
        )
        for m in export.messages
    ]
    return SessionExportBody(exported_at=utcnow(), session=session, messages=messages)


@router.get(
    "/sessions/{session_id}/export",
    response_model=SessionExportBody,
    responses={
        **error_responses(404),
        200: {
            "description": "JSON (every branch) or Markdown (the active branch)",
            "content": {"text/markdown": {"schema": {"type": "string"}}},
        },
    },
)
async def export(
    session_id: str,
    customer: CurrentCustomer,
    runtime: AppRuntime,
    format: Annotated[Literal["json", "markdown"], Query()] = "json",
) -> SessionExportBody | Response:
    """The session as JSON (``format=json``: every branch) or Markdown (the active branch)."""
    found = await export_session(runtime.store.history, customer.customer_id, session_key(session_id))
    if format == "markdown":
        filename = f"parley-{found.session.id}.md"
        headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
        return Response(markdown(found), media_type="text/markdown; charset=utf-8", headers=headers)
    return _export_body(found)


@router.post("/sessions/import", status_code=status.HTTP_201_CREATED, responses=error_responses(400))
async def import_export(
    body: SessionImportBody, customer: CurrentCustomer, runtime: AppRuntime
) -> SessionOut:
    """Store a JSON export as a new session of yours (new ids; same tree, title, tags, times and active
    branch)."""
    data = ImportedSession(
        title=" ".join(body.session.title.split()) or DEFAULT_IMPORT_TITLE,
        tags=body.session.tags,
        active_leaf_id=body.session.active_leaf_id,
        created_at=body.session.created_at,
        updated_at=body.session.updated_at,
        messages=[ImportedMessage(**m.model_dump()) for m in body.messages],
    )
    history = runtime.store.history
    try:
        new_id = await import_session(history, customer.customer_id, data)
    except InvalidImport as exc:
        raise ApiError("invalid_import", str(exc)) from None
    return SessionOut.of(await history.view(customer.customer_id, new_id))
