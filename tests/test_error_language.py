"""Errors speak the client's language (issue 12): a refused field is named as the client wrote it, in plain
words that are the same on the WebSocket and over REST, and every code a client can see lives in one table
(parley/errors.py ``CODES``) that the docs list."""

from __future__ import annotations

import inspect
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

import parley.errors
from parley.errors import CODES, ParleyError
from tests.conftest import LiveServer
from tests.history_helpers import fresh_customer
from tests.invariants import Frame, check_turn
from tests.wsclient import chat_frame

IMPORT = "/api/v1/sessions/import"
DOCS = Path(__file__).resolve().parent.parent / "docs"
# Pydantic's own words and steps, which a client must never see.
INTERNALS = ("function-after", "union_tag", "Input should", "should be", "[TextPart]", "str]", "[storable")


def history_frame(*messages: Any, **fields: Any) -> Frame:
    frame = chat_frame("valid prompt", **fields)
    frame["user_input"]["chat_history"] = list(messages)
    return frame


def with_settings(**text: Any) -> Frame:
    return chat_frame("valid prompt", **text)


WS_REFUSALS: list[tuple[str, Frame, str]] = [
    (
        "content-wrong-type",
        history_frame({"role": "user", "content": 5}),
        "user_input.chat_history[0].content: must be a string or a list of content parts.",
    ),
    (
        "role-wrong-literal",
        history_frame({"role": "robot", "content": "hi"}),
        "user_input.chat_history[0].role: must be one of 'user', 'assistant' or 'system'.",
    ),
    (
        "content-missing",
        history_frame({"role": "user", "content": "ok"}, {"role": "assistant"}),
        "user_input.chat_history[1].content: is required.",
    ),
    (
        "nested-part-text",
        history_frame({"role": "user", "content": [{"type": "text", "text": 3}]}),
        "user_input.chat_history[0].content[0].text: must be a string.",
    ),
    (
        "nested-part-type",
        history_frame({"role": "user", "content": [{"type": "image", "text": "x"}]}),
        "user_input.chat_history[0].content[0].type: must be 'text'.",
    ),
    (
        "history-not-a-list",
        {**chat_frame(), "user_input": {"prompt": "hi", "chat_history": {"role": "user"}}},
        "user_input.chat_history: must be a list.",
    ),
    (
        "prompt-wrong-type",
        chat_frame(42),
        "user_input.prompt: must be a string or a list of content parts.",
    ),
    (
        "customer-id-wrong-type",
        {**chat_frame(), "customer_id": [1]},
        "customer_id: must be an integer or a string.",
    ),
    (
        "temperature-too-high",
        with_settings(temperature=5),
        "user_settings.text.temperature: must be at most 2.",
    ),
    ("max-tokens-too-low", with_settings(max_tokens=0), "user_settings.text.max_tokens: must be at least 1."),
    (
        "too-many-tools",
        with_settings(tools=["calculator"] * 129),
        "user_settings.text.tools: must have at most 128 items.",
    ),
]


def assert_plain(sentence: str) -> None:
    assert not any(internal in sentence for internal in INTERNALS), sentence


@pytest.mark.parametrize(("frame", "expected"), [c[1:] for c in WS_REFUSALS], ids=[c[0] for c in WS_REFUSALS])
async def test_a_bad_chat_frame_names_the_field_as_the_client_wrote_it(
    sqlite_server: LiveServer, frame: Frame, expected: str
) -> None:
    async with await sqlite_server.client() as client:
        await client.send(frame)
        turn = check_turn(await client.events(str(frame["request_id"])))
    assert turn.error is not None
    assert (turn.error["stage"], turn.error["code"]) == ("validation", "invalid_request")
    assert turn.error["content"] == f"Invalid request: {expected}"
    assert_plain(turn.error["content"])


async def test_a_bad_control_frame_speaks_the_same_words(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as client:
        await client.send({"type": "resume", "request_id": "r", "after_seq": -2})
        error = await client.next_other()
    assert error["code"] == "invalid_request"
    assert error["content"] == "Invalid resume frame: after_seq: must be at least -1."


async def test_session_not_found_is_one_answer_that_echoes_nothing(server: LiveServer) -> None:
    """It was made in four places: the WebSocket said ``Session 'abc…' was not found.`` (the id echoed)."""
    malformed, unknown = "not-a-uuid-SECRET", str(uuid.uuid4())
    customer = fresh_customer()
    async with await server.client(customer) as client:
        turns = [await client.turn(await client.chat("hi", session_id=sid)) for sid in (malformed, unknown)]
    async with server.http(customer) as http:
        rest = [(await http.get(f"/api/v1/sessions/{sid}")).json() for sid in (malformed, unknown)]
    for turn in turns:
        assert turn.error is not None
        assert (turn.error["stage"], turn.error["code"], turn.error["content"]) == (
            "validation",
            "session_not_found",
            "Session not found.",
        )
    assert rest == [{"detail": "Session not found.", "code": "session_not_found"}] * 2


def message(**fields: Any) -> dict[str, Any]:
    return {"id": "0", "parent_id": None, "role": "user", "content": "hi", **fields}


def import_body(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"format": "parley.session.v1", "session": {"title": "t"}, "messages": list(messages)}


async def test_rest_speaks_the_websockets_words(sqlite_server: LiveServer) -> None:
    """The same shapes of mistake, the same sentence after the field's name."""
    call = {"id": "c", "name": 5, "input": {}}
    bodies = {
        "wrong type": import_body(message(content=5)),
        "wrong literal": import_body(message(role="robot")),
        "missing": import_body({"id": "0", "role": "user"}),
        "nested item": import_body(
            message(role="user"),
            message(
                id="1",
                parent_id="0",
                role="assistant",
                tool_steps=[{"text": "", "calls": [call], "results": []}],
            ),
        ),
        "union": import_body(
            message(role="user"),
            message(
                id="1",
                parent_id="0",
                role="assistant",
                tool_steps=[{"text": "", "calls": [{**call, "name": "n", "input": 5}], "results": []}],
            ),
        ),
    }
    async with sqlite_server.http(fresh_customer()) as http:
        answers = {name: await http.post(IMPORT, json=body) for name, body in bodies.items()}
    details: dict[str, str] = {}
    for name, answer in answers.items():
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == "invalid_request"
        details[name] = answer.json()["detail"]
        assert_plain(details[name])
    assert details == {
        "wrong type": "messages[0].content: must be a string.",
        "wrong literal": "messages[0].role: must be 'user' or 'assistant'.",
        "missing": "messages[0].content: is required.",
        "nested item": "messages[1].tool_steps[0].calls[0].name: must be a string.",
        "union": "messages[1].tool_steps[0].calls[0].input: must be an object or a string.",
    }


def documented_codes() -> set[str]:
    text = (DOCS / "protocol.md").read_text() + (DOCS / "history.md").read_text()
    return set(re.findall(r"`([a-z_]+)`", text))


def test_every_code_in_the_table_is_documented() -> None:
    missing = sorted(code for code in CODES if code not in documented_codes())
    assert missing == [], (
        f"codes in parley/errors.py CODES that docs/protocol.md and docs/history.md omit: {missing}"
    )


def test_every_parley_error_class_has_its_code_and_stage_in_the_table() -> None:
    classes = [c for _, c in inspect.getmembers(parley.errors, inspect.isclass) if issubclass(c, ParleyError)]
    for cls in classes:
        assert cls.code in CODES, cls
        assert CODES[cls.code].stage == cls.stage, cls


def test_the_rest_statuses_clients_rely_on_are_kept() -> None:
    """docs/protocol.md §8 and docs/history.md §5: the statuses REST answers these codes with."""
    statuses = {code: CODES[code].http_status for code in CODES}
    assert (
        statuses
        | {
            "invalid_request": 422,
            "invalid_cursor": 400,
            "invalid_import": 400,
            "unauthorized": 401,
            "session_not_found": 404,
            "message_not_found": 404,
            "turn_not_found": 404,
            "not_found": 404,
            "method_not_allowed": 405,
            "request_too_large": 413,
            "database_error": 503,
            "server_shutting_down": 503,
        }
        == statuses
    )


def test_a_code_given_to_an_error_takes_the_tables_stage() -> None:
    assert ParleyError("x", code="prompt_too_long").stage == "limits"
    assert ParleyError("x", code="rate_limited").stage == "provider"
    assert ParleyError("x", code="something_new").stage == "internal"


def test_every_code_the_server_raises_is_in_the_table() -> None:
    """A code written where an error is made (``code="…"``, ``frame_error("…")``, ``ApiError("…")``,
    ``error_response("…")``, a constant commented as an error code) must be one of ``CODES``; parley/tools/
    is left out: its codes are told to the model, not to a client."""
    made = re.compile(
        r'code="([a-z_]+)"|frame_error\("([a-z_]+)"|ApiError\(\s*"([a-z_]+)"|error_response\("([a-z_]+)"'
        r'|^[A-Z_]+ = "([a-z_]+)"  # the error code',
        re.MULTILINE,
    )
    unknown = set()
    for path in (DOCS.parent / "parley").rglob("*.py"):
        if "tools" not in path.parts:
            found = (next(g for g in m.groups() if g) for m in made.finditer(path.read_text()))
            unknown |= {f"{path.name}: {code}" for code in found if code not in CODES}
    assert unknown == set()
