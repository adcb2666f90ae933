"""The wire contract: client frame models, server event types, dialect names and the per-turn emitter.

This is the only place event names and payload shapes live; everything else imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from parley.config import Dialect

# --------------------------------------------------------------------------------------------------
# Client frames


class ControlType(StrEnum):
    CANCEL = "cancel"
    PING = "ping"
    RESUME = "resume"
    CLOSE_SESSION = "close_session"


class _Frame(BaseModel):
    # Unknown fields are ignored; wrong types are errors (no "1" -> 1 coercion).
    model_config = ConfigDict(extra="ignore", strict=True)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text must not contain NUL (\\u0000) characters")
    return value


# Text that will be stored: databases cannot keep NUL characters.
StoredText = Annotated[str, AfterValidator(_no_nul)]


class TextPart(_Frame):
    type: Literal["text"]
    text: StoredText


class HistoryMessage(_Frame):
    role: Literal["user", "assistant", "system"]
    content: StoredText | list[TextPart]


class UserInput(_Frame):
    prompt: StoredText | list[TextPart] = ""
    chat_history: list[HistoryMessage] = Field(default_factory=list)
    session_id: str | None = ""
    edit_of: str | None = None  # a user message id: the prompt becomes its sibling (a new branch)
    regenerate: str | None = None  # an assistant message id: a new answer beside it (prompt not needed)


MAX_REQUEST_TOOLS = 128
MAX_REQUEST_STEPS = 100


class TextSettings(_Frame):
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    streaming: bool = True
    system_prompt: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # Agentic turns: the tools the model may call (names from GET /api/v1/tools), and the most model
    # steps (calls to the model) the turn may take; the server's own limit caps it.
    tools: list[str] = Field(default_factory=list, max_length=MAX_REQUEST_TOOLS)
    max_steps: int | None = Field(default=None, ge=1, le=MAX_REQUEST_STEPS)


class UserSettings(_Frame):
    text: TextSettings = Field(default_factory=TextSettings)


class ChatRequest(_Frame):
    request_type: Literal["text"] = "text"
    request_id: str | None = None
    user_input: UserInput
    user_settings: UserSettings = Field(default_factory=UserSettings)
    customer_id: int | str | None = None

    @property
    def prompt_text(self) -> str:
        return join_text(self.user_input.prompt)


class CancelFrame(_Frame):
    type: Literal["cancel"]
    request_id: str | None = None


class ResumeFrame(_Frame):
    type: Literal["resume"]
    request_id: str
    after_seq: int = Field(default=-1, ge=-1)


def join_text(content: str | list[TextPart]) -> str:
    """A prompt or history message as plain text (parts joined with blank lines)."""
    if isinstance(content, str):
        return content
    return "\n\n".join(part.text for part in content)


def describe_validation_error(exc: ValidationError) -> str:
    """One clear sentence for the first problem pydantic found, naming the field."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


# --------------------------------------------------------------------------------------------------
# Server events


class Event(StrEnum):
    """Logical event kinds; the values are the camel dialect's wire names."""

    READY = "websocketReady"
    WORKING = "working"
    TEXT = "text"
    REASONING = "reasoning"
    TOOL_USE = "toolUse"
    TOOL_RESULT = "toolResult"
    CANCELLED = "cancelled"
    ERROR = "error"
    DB_OPERATION = "dbOperationExecuted"
    COMPLETE = "fullProcessComplete"
    PONG = "pong"
    CLOSING = "closing"


SNAKE_NAMES: dict[Event, str] = {
    Event.READY: "websocket_ready",
    Event.WORKING: "working",
    Event.TEXT: "text_chunk",
    Event.REASONING: "thinking_chunk",
    Event.TOOL_USE: "tool_start",
    Event.TOOL_RESULT: "tool_result",
    Event.CANCELLED: "cancelled",
    Event.ERROR: "error",
    Event.DB_OPERATION: "db_operation_executed",
    Event.COMPLETE: "text_completed",
    Event.PONG: "pong",
    Event.CLOSING: "closing",
}
SNAKE_STREAM_ERROR = "stream_error"  # snake name of an `error` whose stage is `provider`
SNAKE_TTS_NOT_REQUESTED = "tts_not_requested"  # snake's second closing frame of a turn

TurnStatus = Literal["completed", "cancelled", "error"]
CANCELLED_TEXT = "Request cancelled"
READY_TEXT = "Backend ready"


def wire_name(dialect: Dialect, event: Event) -> str:
    return event.value if dialect == "camel" else SNAKE_NAMES[event]


def encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def ready_frame(dialect: Dialect, connection_id: str) -> dict[str, Any]:
    return {"type": wire_name(dialect, Event.READY), "content": READY_TEXT, "connection_id": connection_id}


def pong_frame() -> dict[str, Any]:
    return {"type": "pong", "timestamp": now_iso()}


def closing_frame(reason: str) -> dict[str, Any]:
    return {"type": "closing", "content": f"Connection closing: {reason}", "reason": reason}


def frame_error(code: str, message: str, stage: str = "validation") -> dict[str, Any]:
    """An error about a frame that is not a turn (bad JSON, a malformed control frame)."""
    return {"type": "error", "content": message, "stage": stage, "code": code}


class TurnEmitter:
    """Numbers and encodes one turn's events in the connection's dialect and hands them to a sink.

    ``seq`` counts wire frames, so the snake dialect's two closing frames get two numbers.
    """

    def __init__(
        self,
        dialect: Dialect,
        request_id: str,
        sink: Callable[[str], None],
        urgent: Callable[[str], None] | None = None,
    ) -> None:
        self.dialect = dialect
        self.request_id = request_id
        self.session_id: str | None = None
        self.seq = 0
        self.complete = False
        self._sink = sink
        # ``working``, the first ``text`` and ``cancelled`` go out through ``urgent`` (on the socket now,
        # not at the writer's next turn): they are the moments a user waits for.
        self._urgent = urgent or sink
        self._first_text = True
        self._text_name = wire_name(dialect, Event.TEXT)
        self._text_prefix: str | None = None
        self._text_session: str | None = None
        self._reasoning_name = wire_name(dialect, Event.REASONING)

    def _send(self, frame: dict[str, Any], urgent: bool = False) -> None:
        frame["request_id"] = self.request_id
        frame["seq"] = self.seq
        if self.session_id is not None:
            frame["session_id"] = self.session_id
        self.seq += 1
        (self._urgent if urgent else self._sink)(encode(frame))

    def working(self, request_type: str, model: str | None, provider: str | None) -> None:
        content = {"request_type": request_type, "model": model, "provider": provider}
        self._send({"type": wire_name(self.dialect, Event.WORKING), "content": content}, urgent=True)

    def text(self, delta: str) -> None:
        """The hot path: one frame per delta, so the frame is spliced from a prefix made once per turn
        (and again when the session id appears) instead of building and encoding a dict. The fields are
        those ``_send`` would write."""
        prefix = self._text_prefix
        if prefix is None or self._text_session != self.session_id:
            prefix = self._text_prefix = self._frame_prefix(self._text_name)
            self._text_session = self.session_id
        seq = self.seq
        self.seq = seq + 1
        frame = f'{prefix}{seq},"content":{orjson.dumps(delta).decode()}}}'
        if self._first_text:
            self._first_text = False
            self._urgent(frame)
        else:
            self._sink(frame)

    def _frame_prefix(self, name: str) -> str:
        head = {"type": name, "request_id": self.request_id}
        if self.session_id is not None:
            head["session_id"] = self.session_id
        return encode(head)[:-1] + ',"seq":'

    def reasoning(self, delta: str) -> None:
        self._send({"type": self._reasoning_name, "content": delta})

    def tool_use(self, call_id: str, name: str, input: Any) -> None:
        content = {"call_id": call_id, "name": name, "input": input}
        self._send({"type": wire_name(self.dialect, Event.TOOL_USE), "content": content})

    def tool_result(self, call_id: str, output: str, is_error: bool) -> None:
        content = {"call_id": call_id, "output": output, "is_error": is_error}
        self._send({"type": wire_name(self.dialect, Event.TOOL_RESULT), "content": content})

    def cancelled(self) -> None:
        self._send({"type": wire_name(self.dialect, Event.CANCELLED), "content": CANCELLED_TEXT}, urgent=True)

    def error(self, stage: str, code: str, message: str) -> None:
        name = wire_name(self.dialect, Event.ERROR)
        if self.dialect == "snake" and stage == "provider":
            name = SNAKE_STREAM_ERROR
        self._send({"type": name, "content": message, "stage": stage, "code": code})

    def db_operation(
        self, user_message_id: str, ai_message_id: str, status: TurnStatus, usage: dict[str, Any] | None
    ) -> None:
        content = {
            "session_id": self.session_id,
            "user_message_id": user_message_id,
            "ai_message_id": ai_message_id,
            "status": status,
            "usage": usage,
        }
        self._send({"type": wire_name(self.dialect, Event.DB_OPERATION), "content": encode(content)})

    def complete_turn(self, status: TurnStatus) -> None:
        if self.complete:
            return
        self.complete = True
        self._send({"type": wire_name(self.dialect, Event.COMPLETE), "status": status})
        if self.dialect == "snake":
            self._send({"type": SNAKE_TTS_NOT_REQUESTED, "status": status})
