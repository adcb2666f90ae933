"""The wire contract: client frame models, server event types, dialect names and the per-turn emitter.

This is the only place event names and payload shapes live; everything else imports them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parley import validation
from parley.config import Dialect
from parley.text import StoredText, clean_json, encoded, first_surrogate

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


# The longest request_id a client may send (it is stored with the turn's messages and echoed on each event).
MAX_REQUEST_ID_CHARS = 255


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
    request_id: str = Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS)
    after_seq: int = Field(default=-1, ge=-1)


def parse_frame(text: str) -> tuple[Any, str | None]:
    """A text frame as JSON, and where in it a lone surrogate sits (None: nowhere). orjson refuses lone
    surrogates outright; the standard library takes them, so such a frame can be refused field by field
    (parley/text.py) rather than as not JSON. Raises ``ValueError`` for anything else orjson refuses."""
    try:
        return orjson.loads(text), None
    except orjson.JSONDecodeError as exc:
        refused = exc
    try:
        frame = json.loads(text, parse_constant=_no_constant)
        where = first_surrogate(frame)
    except (ValueError, RecursionError):
        raise refused from None
    if where is None:
        raise refused  # not for a surrogate: orjson's verdict stands
    return clean_json(frame), where


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def join_text(content: str | list[TextPart]) -> str:
    """A prompt or history message as plain text (parts joined with blank lines)."""
    if isinstance(content, str):
        return content
    return "\n\n".join(part.text for part in content)


def describe_validation_error(exc: ValidationError, frame: Any = validation.UNSEEN) -> str:
    """Sentences naming each field as the client wrote it in ``frame`` (parley/validation.py), as REST's."""
    return validation.describe(exc.errors(), frame)


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


STREAM_EXPIRED = (
    "That turn cannot be resumed: it is unknown, or its events are no longer kept. Read the session over "
    "REST instead."
)


def frame_error(code: str, message: str, stage: str = "validation") -> dict[str, Any]:
    """An error about a frame that is not a turn (bad JSON, a malformed control frame)."""
    return {"type": "error", "content": message, "stage": stage, "code": code}


# --------------------------------------------------------------------------------------------------
# A turn's events, dialect-neutral: what a turn's log keeps (parley/streams.py)
#
# A logged event is its kind, its seq and its *body*: the encoded JSON fields after the common ones
# (``"content":"Hel"``, or ``"status":"completed"``). ``type``, ``request_id``, ``seq`` and ``session_id`` are
# added per follower, in its dialect, so a turn started in one dialect can be resumed in the other.


class Kind(IntEnum):
    WORKING = 0
    TEXT = 1
    REASONING = 2
    TOOL_USE = 3
    TOOL_RESULT = 4
    CANCELLED = 5
    ERROR = 6
    STREAM_ERROR = 7  # an ``error`` whose stage is ``provider`` (snake names it ``stream_error``)
    DB_OPERATION = 8
    COMPLETE = 9


_KIND_EVENTS = (
    Event.WORKING,
    Event.TEXT,
    Event.REASONING,
    Event.TOOL_USE,
    Event.TOOL_RESULT,
    Event.CANCELLED,
    Event.ERROR,
    Event.ERROR,
    Event.DB_OPERATION,
    Event.COMPLETE,
)
TURN_NAMES: dict[str, tuple[str, ...]] = {
    "camel": tuple(event.value for event in _KIND_EVENTS),
    "snake": tuple(
        SNAKE_STREAM_ERROR if kind == Kind.STREAM_ERROR else SNAKE_NAMES[event]
        for kind, event in zip(Kind, _KIND_EVENTS, strict=True)
    ),
}
_TEXT = int(Kind.TEXT)  # plain ints on the hot path: an IntEnum member is slower to compare and index
_dumps = orjson.dumps


def json_text(value: Any) -> str:
    """``value`` as JSON; anything orjson refuses (lone surrogates, huge integers) is cleaned first."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(clean_json(value), ensure_ascii=False, default=str)


_QUOTED_NAMES = {dialect: [json_text(name) for name in names] for dialect, names in TURN_NAMES.items()}


class FrameEncoder:
    """A turn's logged events as wire frames in one dialect: a prefix per kind, made once per turn (and
    once more when the session id appears), then the seq and the body spliced on (``frame``)."""

    __slots__ = ("_names", "_request_id", "_request_json", "snake")

    def __init__(self, dialect: Dialect, request_id: str) -> None:
        self._names = _QUOTED_NAMES[dialect]
        self._request_id = request_id
        self._request_json = json_text(request_id)
        self.snake = dialect == "snake"

    def prefixes(self, session_id: str | None) -> list[str]:
        """Each kind's frame up to its seq: ``{"type":…,"request_id":…,"session_id":…,"seq":``."""
        session = "" if session_id is None else f',"session_id":{json_text(session_id)}'
        tail = f',"request_id":{self._request_json}{session},"seq":'
        return [f'{{"type":{name}{tail}' for name in self._names]

    @staticmethod
    def frame(prefixes: list[str], kind: int, seq: int, body: str) -> str:
        return f"{prefixes[kind]}{seq},{body}}}"

    def tts_frame(self, seq: int, body: str, session_id: str | None) -> str:
        """snake's second closing frame (``tts_not_requested``), with the ``COMPLETE`` event's body."""
        head: dict[str, Any] = {"type": SNAKE_TTS_NOT_REQUESTED, "request_id": self._request_id}
        if session_id is not None:
            head["session_id"] = session_id
        return f'{encode(head)[:-1]},"seq":{seq},{body}}}'


class EventLog(Protocol):
    """Where a turn's events go, in order: its log (parley/streams.py)."""

    def append(self, kind: int, body: str, urgent: bool = False) -> int:
        """Log one event; return its seq. ``urgent``: onto the followers' sockets at once."""
        ...

    def set_session(self, session_id: str) -> None:
        """Events from now on carry ``session_id``."""
        ...


class DeltaCount:
    """The text events this process sent, and how many of them ``parley_text_deltas_total`` was told of
    (parley/metrics.py): one integer on the hot path, not a metric's lock per delta."""

    __slots__ = ("flushed", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.flushed = 0


DELTAS = DeltaCount()


class TurnEmitter:
    """Shapes one turn's events and logs them; the log numbers them and hands them to the followers.

    ``working``, the first ``text`` and ``cancelled`` are urgent (on the socket now, not at the writer's
    next turn): they are the moments a user waits for. After ``cancelled`` the answer is cut: no text,
    reasoning or tool event is logged any more, only the closing events.
    """

    __slots__ = ("_first_text", "_log", "complete", "cut", "on_first_text", "request_id", "session_id")

    def __init__(self, log: EventLog, request_id: str) -> None:
        self._log = log
        self.on_first_text: Callable[[], None] | None = None  # told once, as the first text is logged
        self.request_id = request_id
        self.session_id: str | None = None
        self.complete = False
        self.cut = False
        self._first_text = True

    def set_session(self, session_id: str) -> None:
        self.session_id = session_id
        self._log.set_session(session_id)

    def working(self, request_type: str, model: str | None, provider: str | None) -> None:
        content = {"request_type": request_type, "model": model, "provider": provider}
        self._log.append(Kind.WORKING, f'"content":{json_text(content)}', urgent=True)

    def text(self, delta: str) -> str | None:
        """The hot path: log one text delta; return it as sent (NUL and lone surrogates replaced), or
        None when the answer was cut."""
        if self.cut:
            return None
        # The text policy's fast path (parley/text.py): text without NUL that orjson takes is clean.
        if "\x00" in delta:
            delta, quoted = encoded(delta)
        else:
            try:
                quoted = _dumps(delta).decode()
            except orjson.JSONEncodeError:
                delta, quoted = encoded(delta)
        DELTAS.sent += 1
        if self._first_text:
            self._first_text = False
            self._log.append(_TEXT, '"content":' + quoted, True)
            if self.on_first_text is not None:
                self.on_first_text()
        else:
            self._log.append(_TEXT, '"content":' + quoted)
        return delta

    def reasoning(self, delta: str) -> str | None:
        """Log one reasoning delta; return it as sent, or None when the answer was cut."""
        if self.cut:
            return None
        delta, quoted = encoded(delta)
        self._log.append(Kind.REASONING, '"content":' + quoted)
        return delta

    def tool_use(self, call_id: str, name: str, input: Any) -> None:
        if not self.cut:
            content = {"call_id": call_id, "name": name, "input": input}
            self._log.append(Kind.TOOL_USE, f'"content":{json_text(content)}')

    def tool_result(self, call_id: str, output: str, is_error: bool) -> None:
        if not self.cut:
            content = {"call_id": call_id, "output": output, "is_error": is_error}
            self._log.append(Kind.TOOL_RESULT, f'"content":{json_text(content)}')

    def cancelled(self, code: str | None = None) -> None:
        """Say ``cancelled`` (once) and cut the answer there. ``code``: why the server stopped the turn
        (``turn_too_long``); a client's cancel has none."""
        if self.cut or self.complete:
            return
        self.cut = True
        why = f',"code":{json_text(code)}' if code else ""
        self._log.append(Kind.CANCELLED, f'"content":{json_text(CANCELLED_TEXT)}{why}', urgent=True)

    def error(self, stage: str, code: str, message: str) -> None:
        kind = Kind.STREAM_ERROR if stage == "provider" else Kind.ERROR
        body = f'"content":{json_text(message)},"stage":{json_text(stage)},"code":{json_text(code)}'
        self._log.append(kind, body)

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
        self._log.append(Kind.DB_OPERATION, f'"content":{json_text(json_text(content))}')

    def complete_turn(self, status: TurnStatus) -> None:
        if self.complete:
            return
        self.complete = True
        self._log.append(Kind.COMPLETE, f'"status":{json_text(status)}')
