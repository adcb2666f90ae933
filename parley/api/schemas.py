"""The shapes of the history API's requests and answers (they are the OpenAPI schemas at ``/docs``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from parley.store.history import SessionRow, SessionView
from parley.store.tables import Message
from parley.streams import LiveAnswer
from parley.text import StoredText, storable

MAX_TAGS = 20


def _utc(value: datetime) -> datetime:
    """Aware datetimes in UTC; naive ones are taken as UTC."""
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


def _trimmed(value: str) -> str:
    value = " ".join(value.split())
    if not value:
        raise ValueError("must not be blank")
    return value


Text = StoredText
UtcDateTime = Annotated[datetime, AfterValidator(_utc)]
Title = Annotated[
    str, Field(min_length=1, max_length=255), AfterValidator(storable), AfterValidator(_trimmed)
]
Tag = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(storable), AfterValidator(_trimmed)]


def _storable_json(value: Any) -> Any:
    """A JSON value whose every string (keys too) is ``storable``."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        for key, item in value.items():
            storable(key)
            _storable_json(item)
    elif isinstance(value, list):
        for item in value:
            _storable_json(item)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_json)]
MAX_STEPS = 100  # PARLEY_MAX_TOOL_STEPS's ceiling: no turn stores more


# Tool steps as stored, shown and imported. No length limits on the strings: what a model wrote (a call id,
# an unknown tool's name) is stored as it came, and an export must always load back.
class ToolCallOut(BaseModel):
    id: Text = Field(description="The call's id, as the model gave it")
    name: Text = Field(description="The tool the model called (an unknown one fails with an error result)")
    input: JsonObject | Text = Field(
        description="The arguments: a JSON object, or the model's raw text when it wrote no valid object"
    )


class ToolResultOut(BaseModel):
    call_id: Text
    output: Text
    is_error: bool = Field(description="The call failed (or never ran): the output says why")


class ToolStepOut(BaseModel):
    """One model step of an agentic answer: its text, the tools it called and what they returned."""

    text: Text = Field(description="The text the model wrote in this step (the start of the message content)")
    calls: list[ToolCallOut]
    results: list[ToolResultOut] = Field(description="One per call, in the calls' order")


class MessageOut(BaseModel):
    id: uuid.UUID
    role: str = Field(description="user or assistant")
    content: str
    reasoning: str | None
    status: str = Field(description="streaming, completed, cancelled or error")
    model: str | None
    provider: str | None
    usage: dict[str, Any] | None
    request_id: str | None
    parent_id: uuid.UUID | None
    error_code: str | None
    created_at: datetime
    tool_steps: list[ToolStepOut] | None = Field(
        description="An agentic answer's tool steps, oldest first (null when it called no tool); "
        "content is all the text, the steps' texts first"
    )
    sibling_ids: list[uuid.UUID] = Field(
        description="This message and its alternatives (same parent), oldest first: the branch switcher"
    )
    seq: int | None = Field(
        description="A streaming answer only: the seq of the turn's last event that content (and "
        "reasoning, tool_steps) include; resume with after_seq = seq to get the rest (docs/protocol.md "
        "section 5). Null otherwise."
    )

    @classmethod
    def of(cls, row: Message, siblings: list[uuid.UUID], live: LiveAnswer | None = None) -> MessageOut:
        """The stored row; for an answer still streaming in this server, what its turn has sent so far."""
        fields = {name: getattr(row, name) for name in cls.model_fields if name not in _DERIVED}
        fields["seq"] = row.stream_seq if row.status == "streaming" else None
        if live is not None and row.status == "streaming":
            fields |= {"content": live.content, "reasoning": live.reasoning, "seq": live.seq}
            fields["tool_steps"] = live.tool_steps
        return cls(**fields, sibling_ids=siblings)


_DERIVED = frozenset({"sibling_ids", "seq"})


LiveLookup = Callable[[uuid.UUID], LiveAnswer | None]


class SessionOut(BaseModel):
    id: uuid.UUID
    title: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    active_leaf_id: uuid.UUID | None = Field(description="The last message of the active branch")
    messages: list[MessageOut] = Field(description="The active branch, from the first message to the leaf")

    @classmethod
    def of(cls, view: SessionView, live: LiveLookup | None = None) -> SessionOut:
        """The session's active branch; ``live`` gives an answer still streaming as its turn has it now."""
        s = view.session
        messages = [
            MessageOut.of(
                m, view.siblings.get(m.id, [m.id]), live(m.id) if live and m.status == "streaming" else None
            )
            for m in view.path
        ]
        return cls(
            id=s.id,
            title=s.title,
            tags=view.tags,
            created_at=s.created_at,
            updated_at=s.updated_at,
            active_leaf_id=view.active_leaf_id,
            messages=messages,
        )


class SessionSummary(BaseModel):
    id: uuid.UUID
    title: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    last_message_at: datetime = Field(description="When the newest message was added (the sort key)")

    @classmethod
    def of(cls, row: SessionRow) -> SessionSummary:
        s = row.session
        return cls(
            id=s.id,
            title=s.title,
            tags=row.tags,
            created_at=s.created_at,
            updated_at=s.updated_at,
            last_message_at=row.last_message_at,
        )


class SessionPage(BaseModel):
    items: list[SessionSummary]
    next_cursor: str | None = Field(description="Pass as ?cursor= (with the same filters) for the next page")


class SessionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS, description="Replaces all tags")


class ActiveLeafIn(BaseModel):
    message_id: Text = Field(max_length=100, description="Any message of the session")


class SearchHitOut(BaseModel):
    session_id: uuid.UUID
    session_title: str
    message_id: uuid.UUID
    role: str
    snippet: str = Field(description="HTML-escaped text around the matches; matches wrapped in <mark></mark>")
    created_at: datetime
    score: float = Field(description="Relevance; higher is better (comparable within one result list)")


class SearchPage(BaseModel):
    items: list[SearchHitOut]
    next_cursor: str | None


ExportFormat = Literal["json", "markdown"]
