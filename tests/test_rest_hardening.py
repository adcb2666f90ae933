"""REST under hostile or large input (issue 12): a 422 names the field and never echoes what was sent,
request bodies are limited (413, unread), any stored session exports, and an import keeps its times."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.store.exchange import ImportedMessage, ImportedSession, import_session
from tests.conftest import LiveServer, live_server, make_settings
from tests.history_helpers import fresh_customer, get_json

IMPORT = "/api/v1/sessions/import"
JSON_TYPE = {"Content-Type": "application/json"}
SMALL_LIMIT = 64 * 1024
HANG_GUARD_S = 10.0  # only against a hang: the answer comes at once or never


def export_body(messages: list[dict[str, Any]], **session: Any) -> dict[str, Any]:
    return {"format": "parley.session.v1", "session": {"title": "Imported", **session}, "messages": messages}


def chain(count: int, content: str = "") -> list[dict[str, Any]]:
    """``count`` messages, each the reply to the one before."""
    return [
        {
            "id": str(n),
            "parent_id": str(n - 1) if n else None,
            "role": "assistant" if n % 2 else "user",
            "content": content,
        }
        for n in range(count)
    ]


def encoded(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def refusal(response: httpx.Response, status: int, code: str) -> str:
    """The error's detail, after checking the answer is ``{"detail": <sentence>, "code": code}``."""
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"detail", "code"} and body["code"] == code, body
    assert isinstance(body["detail"], str)
    return str(body["detail"])


def local_port(response: httpx.Response) -> int:
    """The client's port of the connection that carried ``response`` (while the client is open): the same
    port, the same connection."""
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


@pytest.fixture
async def session_id(sqlite_server: LiveServer) -> str:
    async with sqlite_server.http() as http:
        created = await http.post(IMPORT, json=export_body(chain(2)))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


# -- 422: the field in plain words, never the value ---------------------------------------------------

LONG_ID = "\\ud800" * 101
CASES = [
    ("PATCH", "", b'{"title": "\\ud800"}', "title: must be valid Unicode text"),
    ("PATCH", "", b'{"title": "a\\u0000b"}', "title: must not contain NUL"),
    ("PATCH", "", b'{"tags": ["ok", "\\udfff"]}', "tags[1]: must be valid Unicode text"),
    ("PATCH", "", b'{"\\ud800": 1}', "the body: must be valid Unicode text"),  # pydantic: no key
    ("PUT", "/active-leaf", b'{"message_id": "\\ud800"}', "message_id: must be valid Unicode text"),
    ("PUT", "/active-leaf", b'{"message_id": "%s"}' % LONG_ID.encode(), "message_id: "),
    ("POST", IMPORT, b'{"session": {"title": "\\ud800"}, "messages": []}', "session.title: must be valid"),
    (
        "POST",
        IMPORT,
        b'{"session": {}, "messages": [{"id": "a", "role": "user", "content": "x\\udc00"}]}',
        "messages[0].content: must be valid Unicode text",
    ),
]


@pytest.mark.parametrize(("method", "where", "body", "start"), CASES)
async def test_text_a_client_cannot_send_is_422_naming_the_field(
    sqlite_server: LiveServer, session_id: str, method: str, where: str, body: bytes, start: str
) -> None:
    """A lone surrogate made the 422's echo unencodable: a 500, and the keep-alive connection dropped."""
    path = where if where.startswith("/api") else f"/api/v1/sessions/{session_id}{where}"
    async with sqlite_server.http() as http:
        refused = await http.request(method, path, content=body, headers=JSON_TYPE)
        detail = refusal(refused, 422, "invalid_request")
        after = await http.get(f"/api/v1/sessions/{session_id}")
        assert after.status_code == 200 and local_port(after) == local_port(refused)  # kept alive
    assert detail.startswith(start), detail
    assert "\\ud" not in refused.text and "a\\u0000b" not in refused.text and "\x00" not in detail


async def test_a_422_says_what_is_wrong_where_in_plain_words(
    sqlite_server: LiveServer, session_id: str
) -> None:
    path = f"/api/v1/sessions/{session_id}"
    bad_tool_step = chain(2)
    bad_tool_step[1]["tool_steps"] = [{"text": "", "calls": [{"id": "1", "name": "a\x00", "input": {}}]}]
    async with sqlite_server.http() as http:
        answers = {
            "unknown": await http.patch(path, json={"color": 1}),
            "blank": await http.patch(path, json={"title": " "}),
            "long": await http.patch(path, json={"title": "x" * 300 + "SECRET"}),
            "query": await http.get("/api/v1/sessions", params={"limit": 0}),
            "missing": await http.post(IMPORT, json={"session": {}}),
            "role": await http.post(
                IMPORT, json=export_body([*chain(1), {"id": "b", "role": "x", "content": ""}])
            ),
            "nested": await http.post(IMPORT, json=export_body(bad_tool_step)),
            "not json": await http.patch(path, content=b'{"title": ', headers=JSON_TYPE),
        }
    details = {name: refusal(answer, 422, "invalid_request") for name, answer in answers.items()}
    assert details == {
        "unknown": "color: is not a field here.",
        "blank": "title: must not be blank.",
        "long": "title: must be at most 255 characters.",
        "query": "query parameter limit: must be at least 1.",
        "missing": "messages: is required.",
        "role": "messages[1].role: must be 'user' or 'assistant'.",
        "nested": "messages[1].tool_steps[0].calls[0].name: must not contain NUL (\\u0000) characters; "
        "messages[1].tool_steps[0].results: is required.",
        "not json": details["not json"],
    }
    assert details["not json"].startswith("the body is not valid JSON (")
    assert all("SECRET" not in answer.text for answer in answers.values())


async def test_an_import_of_too_many_messages_is_invalid_import_without_the_echo(
    sqlite_server: LiveServer,
) -> None:
    """100,000 messages (6 MiB, within the body limit) came back whole in a bare 422."""
    async with sqlite_server.http(fresh_customer()) as http:
        refused = await http.post(IMPORT, content=encoded(export_body(chain(100_000))), headers=JSON_TYPE)
        listed = await get_json(http, "/api/v1/sessions")
    detail = refusal(refused, 400, "invalid_import")
    assert detail == "messages: an import holds at most 10,000 messages (this one has 100,000)."
    assert len(refused.content) < 500
    assert listed["items"] == []


async def test_422_is_described_as_the_error_shape_in_openapi(sqlite_server: LiveServer) -> None:
    async with sqlite_server.http(None) as http:
        spec = (await http.get("/openapi.json")).json()
    patch = spec["paths"]["/api/v1/sessions/{session_id}"]["patch"]["responses"]
    assert patch["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
    assert patch["413"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]


# -- export of any stored session, import with its times ----------------------------------------------


async def test_a_session_of_more_than_10000_messages_exports(server: LiveServer) -> None:
    """The JSON export of 10,502 messages was a 500 (the import's limit checked on the way out)."""
    customer, count = fresh_customer(), 10_502
    messages = [
        ImportedMessage(m["id"], m["parent_id"], m["role"], f"message {n}")
        for n, m in enumerate(chain(count))
    ]
    session_id = await import_session(server.store.history, customer, ImportedSession("Long", messages))
    async with server.http(customer) as http:
        exported = await get_json(http, f"/api/v1/sessions/{session_id}/export")
        markdown = await http.get(f"/api/v1/sessions/{session_id}/export", params={"format": "markdown"})
        back = await http.post(IMPORT, content=encoded(exported), headers=JSON_TYPE)
    assert [m["content"] for m in exported["messages"]] == [f"message {n}" for n in range(count)]
    assert exported["session"]["active_leaf_id"] == exported["messages"][-1]["id"]
    assert markdown.status_code == 200 and "message 10501" in markdown.text
    assert refusal(back, 400, "invalid_import").startswith("messages: an import holds at most 10,000")


async def test_an_import_keeps_the_sessions_times(server: LiveServer) -> None:
    customer = fresh_customer()
    created, updated = "2020-01-02T03:04:05.123456Z", "2021-06-07T08:09:10+02:00"
    async with server.http(customer) as http:
        given = await http.post(IMPORT, json=export_body(chain(2), created_at=created, updated_at=updated))
        naive = await http.post(IMPORT, json=export_body(chain(1), created_at="2019-05-06T07:08:09"))
        assert given.status_code == 201 and naive.status_code == 201, (given.text, naive.text)
        listed = await get_json(http, "/api/v1/sessions")
        exported = await get_json(http, f"/api/v1/sessions/{given.json()['id']}/export")

    def times(body: dict[str, Any]) -> tuple[datetime, datetime]:
        return datetime.fromisoformat(body["created_at"]), datetime.fromisoformat(body["updated_at"])

    expected = (datetime(2020, 1, 2, 3, 4, 5, 123456, UTC), datetime(2021, 6, 7, 6, 9, 10, tzinfo=UTC))
    summary = next(item for item in listed["items"] if item["id"] == given.json()["id"])
    assert times(given.json()) == times(summary) == times(exported["session"]) == expected
    naive_created, naive_updated = times(naive.json())
    assert naive_created == datetime(2019, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert naive_updated > naive_created  # not given: the time of the import


# -- the request body limit ----------------------------------------------------------------------------


@pytest.fixture
async def small_limit_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(make_settings(tmp_path, max_request_bytes=SMALL_LIMIT)) as live:
        yield live


def body_of_size(size: int) -> bytes:
    """An import whose JSON is exactly ``size`` bytes."""
    empty = encoded(export_body(chain(1)))
    return encoded(export_body(chain(1, "x" * (size - len(empty)))))


async def chunked(body: bytes, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_a_body_over_the_limit_is_413_and_the_connection_goes_on(
    small_limit_server: LiveServer,
) -> None:
    async with small_limit_server.http(fresh_customer()) as http:
        refused = await http.post(IMPORT, content=body_of_size(SMALL_LIMIT + 1), headers=JSON_TYPE)
        huge = await http.post(IMPORT, content=body_of_size(20 * SMALL_LIMIT), headers=JSON_TYPE)
        at_limit = await http.post(IMPORT, content=body_of_size(SMALL_LIMIT), headers=JSON_TYPE)
        assert local_port(refused) == local_port(huge) == local_port(at_limit)  # kept alive
    detail = refusal(refused, 413, "request_too_large")
    assert detail == "The request body is larger than the limit of 65,536 bytes."
    assert "xxx" not in refused.text
    refusal(huge, 413, "request_too_large")
    assert at_limit.status_code == 201, at_limit.text


async def test_a_chunked_body_is_counted_as_it_arrives(small_limit_server: LiveServer) -> None:
    async with small_limit_server.http(fresh_customer()) as http:
        refused = await http.post(IMPORT, content=chunked(body_of_size(4 * SMALL_LIMIT)), headers=JSON_TYPE)
        within = await http.post(IMPORT, content=chunked(body_of_size(SMALL_LIMIT)), headers=JSON_TYPE)
        assert local_port(refused) == local_port(within)  # kept alive
    assert "content-length" not in refused.request.headers
    assert refused.request.headers["transfer-encoding"] == "chunked"
    refusal(refused, 413, "request_too_large")
    assert within.status_code == 201, within.text


async def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(
    sqlite_server: LiveServer,
) -> None:
    """The 51 MB import of the issue, at the default limit: the answer comes without a byte of the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sqlite_server.port)
    head = (
        f"POST {IMPORT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {sqlite_server.token(fresh_customer())}\r\n"
        f"Content-Length: {51 * 1024 * 1024}\r\n\r\n"
    )
    try:
        writer.write(head.encode())
        await writer.drain()
        async with asyncio.timeout(HANG_GUARD_S):
            status_line = await reader.readline()
            headers = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
            length = int(headers.split("content-length:")[1].split("\r\n")[0])
            body = json.loads(await reader.readexactly(length))
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    assert body["code"] == "request_too_large"
    async with sqlite_server.http(None) as http:
        assert (await http.get("/healthz")).status_code == 200
