"""REST: ``GET /api/v1/sessions/{id}``, ``/healthz`` and the OpenAPI description (PROTOCOL section 7)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import LiveServer
from tests.invariants import TurnSummary
from tests.wsclient import ChatClient

MESSAGE_FIELDS = {"id", "role", "content", "reasoning", "status", "model", "usage", "created_at"}
SESSIONS_ROUTE = "/api/v1/sessions/{session_id}"


async def get_session(server: LiveServer, session_id: str, customer_id: int | None = 1) -> httpx.Response:
    async with server.http(customer_id) as http:
        return await http.get(f"/api/v1/sessions/{session_id}")


async def completed_turn(client: ChatClient, prompt: Any, **kwargs: Any) -> TurnSummary:
    turn = await client.turn(await client.chat(prompt, **kwargs))
    assert turn.status == "completed" and turn.session_id is not None
    return turn


@pytest.fixture
async def session_id(server: LiveServer) -> str:
    """A session of customer 1 with one completed turn."""
    async with await server.client(1) as client:
        turn = await completed_turn(client, "A private conversation")
    assert turn.session_id is not None
    return turn.session_id


# -- who may read ------------------------------------------------------------------------------------


async def test_without_token_is_401(server: LiveServer, session_id: str) -> None:
    response = await get_session(server, session_id, customer_id=None)
    assert response.status_code == 401
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert "A private conversation" not in response.text


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-token",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer " + jwt.encode({"customer_id": "1"}, "another-secret-" + "z" * 40, algorithm="HS256"),
        "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJjdXN0b21lcl9pZCI6IjEifQ.",
    ],
    ids=["garbage", "empty", "basic", "wrong-secret", "alg-none"],
)
async def test_bad_token_is_401(server: LiveServer, session_id: str, authorization: str) -> None:
    async with server.http(None) as http:
        response = await http.get(f"/api/v1/sessions/{session_id}", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert "A private conversation" not in response.text


async def test_expired_token_is_401(server: LiveServer, session_id: str) -> None:
    async with server.http(None) as http:
        response = await http.get(
            f"/api/v1/sessions/{session_id}",
            headers={"Authorization": f"Bearer {server.token(1, ttl_s=-30)}"},
        )
    assert response.status_code == 401


async def test_token_in_query_is_not_accepted_over_rest(server: LiveServer, session_id: str) -> None:
    """REST takes the bearer header (PROTOCOL 7); a query token is for the WebSocket only."""
    async with server.http(None) as http:
        response = await http.get(f"/api/v1/sessions/{session_id}", params={"token": server.token(1)})
    assert response.status_code == 401


async def test_other_customer_gets_404(server: LiveServer, session_id: str) -> None:
    response = await get_session(server, session_id, customer_id=2)
    assert response.status_code == 404
    assert "A private conversation" not in response.text
    unknown = await get_session(server, str(uuid.uuid4()), customer_id=2)
    # The same answer as for a session that does not exist: nothing tells them apart.
    assert unknown.status_code == 404 and unknown.json() == response.json()


@pytest.mark.parametrize(
    "bad_id",
    ["not-a-uuid", "12345", "00000000-0000-0000-0000-00000000000g", "x" * 300, "%27%20OR%201%3D1--"],
    ids=["word", "number", "bad-hex", "long", "sql"],
)
async def test_malformed_id_is_404(server: LiveServer, bad_id: str) -> None:
    response = await get_session(server, bad_id)
    assert response.status_code == 404


async def test_unknown_uuid_is_404(server: LiveServer) -> None:
    response = await get_session(server, str(uuid.uuid4()))
    assert response.status_code == 404
    assert "detail" in response.json()


# -- what the owner reads ----------------------------------------------------------------------------


async def test_own_session_has_its_messages_in_order(server: LiveServer) -> None:
    async with await server.client(1) as client:
        first = await completed_turn(client, "First question")
        second = await completed_turn(
            client,
            [{"type": "text", "text": "Second question"}],
            session_id=first.session_id or "",
            options={"reasoning": "Let me think it over"},
        )
        third = await completed_turn(
            client,
            [{"type": "text", "text": "Part one"}, {"type": "text", "text": "Part two"}],
            session_id=first.session_id or "",
        )
    response = await get_session(server, first.session_id or "")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == first.session_id
    assert isinstance(body["title"], str) and body["title"].startswith("First question")
    for key in ("created_at", "updated_at"):
        datetime.fromisoformat(body[key])

    messages = body["messages"]
    for message in messages:
        assert set(message) >= MESSAGE_FIELDS, f"missing {MESSAGE_FIELDS - set(message)}"
        datetime.fromisoformat(message["created_at"])
    turns = (first, second, third)
    expected_ids = [i for t in turns for i in (t.user_message_id, t.ai_message_id)]
    assert [m["id"] for m in messages] == expected_ids
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert [m["status"] for m in messages] == ["completed"] * 6
    created = [datetime.fromisoformat(m["created_at"]) for m in messages]
    assert created == sorted(created)

    user = messages[0::2]
    assert [m["content"] for m in user[:2]] == ["First question", "Second question"]
    assert isinstance(user[2]["content"], str)
    assert "Part one" in user[2]["content"] and "Part two" in user[2]["content"]
    assert user[2]["content"] == "Part one\n\nPart two"  # docs/protocol.md: parts joined by a blank line

    answers = messages[1::2]
    assert [m["content"] for m in answers] == [t.text for t in turns]
    assert [m["usage"] for m in answers] == [t.usage for t in turns]
    assert all(m["model"] == "demo" for m in answers)
    assert answers[1]["reasoning"] == "Let me think it over"
    assert answers[0]["reasoning"] is None
    assert answers[0]["usage"]["output_tokens"] >= 1


async def test_session_read_while_streaming_shows_the_answer_row(server: LiveServer) -> None:
    async with await server.client(1) as client:
        rid = await client.chat("Slow one", options={"chunks": 20, "delay_ms": 50})
        first_text = await client.wait_for(rid, "text")
        mid = await get_session(server, first_text["session_id"])
        turn = await client.turn(rid)
    assert mid.status_code == 200
    messages = mid.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Slow one" and messages[0]["status"] == "completed"
    assert messages[1]["status"] in ("streaming", "completed")
    assert turn.text.startswith(messages[1]["content"])


async def test_json_errors_have_detail(server: LiveServer) -> None:
    response = await get_session(server, str(uuid.uuid4()), customer_id=None)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str)


# -- health and docs ---------------------------------------------------------------------------------


async def test_healthz_is_ok(server: LiveServer) -> None:
    async with server.http(None) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["running_turns"] == 0


async def test_openapi_describes_the_sessions_route(server: LiveServer) -> None:
    async with server.http(None) as http:
        spec = await http.get("/openapi.json")
        docs = await http.get("/docs")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert SESSIONS_ROUTE in paths
    operation = paths[SESSIONS_ROUTE]["get"]
    assert "200" in operation["responses"] and "404" in operation["responses"]
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    assert "openapi.json" in docs.text
