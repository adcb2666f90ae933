"""The WebSocket protocol as an AsyncAPI 3.0 document (``GET /asyncapi.json``), built from parley/protocol.py.

Client frames come from the frame models themselves, event names from ``Event`` and the snake dialect's
table, so a frame or event added there shows up here; what each event carries is described once below, and
a test fails when an event has no description. docs/protocol.md is the prose.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from parley.errors import CODES
from parley.protocol import (
    CANCELLED_TEXT,
    MAX_REQUEST_ID_CHARS,
    READY_TEXT,
    SNAKE_NAMES,
    SNAKE_STREAM_ERROR,
    SNAKE_TTS_NOT_REQUESTED,
    CancelFrame,
    ChatRequest,
    ControlType,
    Event,
    ResumeFrame,
)

WS_PATH = "/chat/ws"
STRING: dict[str, Any] = {"type": "string"}
NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
STATUS: dict[str, Any] = {"enum": ["completed", "cancelled", "error"]}
USAGE: dict[str, Any] = {
    "type": ["object", "null"],
    "properties": {"input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}},
}

# What each event carries besides ``type`` (and, a turn's events, ``request_id``, ``seq``, ``session_id``).
EVENTS: dict[Event, tuple[str, dict[str, Any]]] = {
    Event.READY: (
        "The first frame of every connection.",
        {"content": {"const": READY_TEXT}, "connection_id": STRING},
    ),
    Event.WORKING: (
        "A turn started: the model as requested and the provider that answers (null: not configured).",
        {
            "content": {
                "type": "object",
                "properties": {"request_type": STRING, "model": NULLABLE_STRING, "provider": NULLABLE_STRING},
            }
        },
    ),
    Event.TEXT: ("A delta of the answer's text.", {"content": STRING}),
    Event.REASONING: ("A delta of the model's reasoning.", {"content": STRING}),
    Event.TOOL_USE: (
        "A tool call the model made (agentic turns).",
        {"content": {"type": "object", "properties": {"call_id": STRING, "name": STRING, "input": {}}}},
    ),
    Event.TOOL_RESULT: (
        "The result of that call.",
        {
            "content": {
                "type": "object",
                "properties": {"call_id": STRING, "output": STRING, "is_error": {"type": "boolean"}},
            }
        },
    ),
    Event.CANCELLED: (
        "The answer was stopped; what was said until then is kept. `code` when the server stopped it.",
        {"content": {"const": CANCELLED_TEXT}, "code": {"enum": ["turn_too_long", "session_deleted"]}},
    ),
    Event.ERROR: (
        "A turn failed, or a frame was refused (then without `seq`). In snake, `stream_error` when the "
        "stage is `provider`.",
        {
            "content": STRING,
            "stage": {"enum": sorted({code.stage for code in CODES.values()})},
            "code": {"enum": sorted(CODES)},
        },
    ),
    Event.DB_OPERATION: (
        "The turn is stored: `content` is a JSON-encoded string of session_id, user_message_id, "
        "ai_message_id, status and usage.",
        {"content": STRING},
    ),
    Event.COMPLETE: (
        "The turn's last event (in snake: `text_completed`, then `tts_not_requested`).",
        {"status": STATUS},
    ),
    Event.PONG: ("The answer to `ping`.", {"timestamp": {"type": "string", "format": "date-time"}}),
    Event.CLOSING: (
        "The server is about to close the connection.",
        {"reason": {"enum": ["timeout", "client_request"]}, "content": STRING},
    ),
}
TURN_FIELDS: dict[str, Any] = {
    "request_id": STRING,
    "seq": {"type": "integer", "minimum": 0, "description": "the event's place in its turn's log, from 0"},
    "session_id": {"type": "string", "description": "once the session exists"},
}
NOT_TURN_EVENTS = (Event.READY, Event.PONG, Event.CLOSING)


def wire_names(event: Event) -> list[str]:
    """Every ``type`` the event has on the wire, in either dialect."""
    names = {event.value, SNAKE_NAMES[event]}
    if event is Event.ERROR:
        names.add(SNAKE_STREAM_ERROR)
    if event is Event.COMPLETE:
        names.add(SNAKE_TTS_NOT_REQUESTED)
    return sorted(names)


def _event_message(event: Event) -> dict[str, Any]:
    description, fields = EVENTS[event]
    properties: dict[str, Any] = {"type": {"enum": wire_names(event)}, **fields}
    if event not in NOT_TURN_EVENTS:
        properties.update(TURN_FIELDS)
    return {
        "name": event.value,
        "title": " / ".join(wire_names(event)),
        "summary": description,
        "payload": {"type": "object", "required": ["type"], "properties": properties},
    }


def _model_message(
    name: str, model: type[BaseModel], summary: str, schemas: dict[str, Any]
) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    return {"name": name, "summary": summary, "payload": schema}


def _control(kind: ControlType, summary: str) -> dict[str, Any]:
    payload = {"type": "object", "required": ["type"], "properties": {"type": {"const": kind.value}}}
    return {"name": kind.value, "summary": summary, "payload": payload}


def document(version: str, host: str, secure: bool) -> dict[str, Any]:
    """The AsyncAPI document for a server reached at ``host`` (``ws`` or, behind TLS, ``wss``)."""
    schemas: dict[str, Any] = {}
    client = {
        "chat": _model_message("chat", ChatRequest, "Ask the model: starts a turn.", schemas),
        ControlType.CANCEL.value: _model_message(
            "cancel", CancelFrame, "Stop a turn (this connection's running one without request_id).", schemas
        ),
        ControlType.RESUME.value: _model_message(
            "resume", ResumeFrame, "Replay a turn's events after after_seq, then follow it live.", schemas
        ),
        ControlType.PING.value: _control(ControlType.PING, "Answered with pong."),
        ControlType.CLOSE_SESSION.value: _control(ControlType.CLOSE_SESSION, "Close the connection."),
    }
    server = {event.value: _event_message(event) for event in Event}
    messages = {
        **{f"client.{k}": v for k, v in client.items()},
        **{f"server.{k}": v for k, v in server.items()},
    }
    channel_ref = {"$ref": "#/channels/chat"}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Parley WebSocket protocol",
            "version": version,
            "description": (
                "Chat turns over one WebSocket: send a chat request, receive the answer as events of one "
                "turn (`request_id`, numbered by `seq`). Event names come in two dialects, `camel` "
                "(default) and `snake` (`?events=`). The REST API is described at /docs; the prose of "
                "this protocol is docs/protocol.md. request_id: at most "
                f"{MAX_REQUEST_ID_CHARS} characters, no control characters."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {"parley": {"host": host, "protocol": "wss" if secure else "ws", "pathname": WS_PATH}},
        "channels": {
            "chat": {
                "address": WS_PATH,
                "messages": messages,
                "bindings": {
                    "ws": {
                        "query": {
                            "type": "object",
                            "properties": {
                                "token": {
                                    "type": "string",
                                    "description": "a JWT (or Authorization: Bearer)",
                                },
                                "events": {"enum": ["camel", "snake"]},
                            },
                        }
                    }
                },
            }
        },
        "operations": {
            "clientFrames": {
                "action": "receive",
                "channel": channel_ref,
                "summary": "Frames a client sends.",
                "messages": [{"$ref": f"#/channels/chat/messages/client.{k}"} for k in client],
            },
            "serverEvents": {
                "action": "send",
                "channel": channel_ref,
                "summary": "Events the server sends.",
                "messages": [{"$ref": f"#/channels/chat/messages/server.{k}"} for k in server],
            },
        },
        "components": {"schemas": schemas},
    }
