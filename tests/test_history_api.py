"""The history REST API: listing with stable cursors and filters, rename and tags, deletions, export and
import, and the same 404 for other customers' data on every route (docs/history.md).

Each test works under fresh customers, so listings on the shared PostgreSQL database see only its data.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.history_helpers import (
    branch_frame,
    completed,
    fresh_customer,
    get_json,
    send_turn,
    session_json,
)
from tests.test_turn_paths import stored_counts
from tests.wsclient import ChatClient


async def new_sessions(client: ChatClient, prompts: list[str]) -> list[str]:
    """One single-turn session per prompt, in order; their ids."""
    return [(await completed(client, prompt)).session_id or "" for prompt in prompts]


async def list_all(http: httpx.AsyncClient, **params: Any) -> list[list[str]]:
    """Every page of a listing, as lists of ids."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = await get_json(http, "/api/v1/sessions", params=query)
        pages.append([item["id"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor never ends"


# -- listing -----------------------------------------------------------------------------------------


async def test_list_is_newest_activity_first_with_summaries(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        ids = await new_sessions(client, ["One", "Two", "Three"])
        await completed(client, "One again", session_id=ids[0])  # activity moves One to the top
    async with server.http(customer) as http:
        body = await get_json(http, "/api/v1/sessions")
    assert [item["id"] for item in body["items"]] == [ids[0], ids[2], ids[1]]
    assert body["next_cursor"] is None
    first = body["items"][0]
    assert set(first) == {"id", "title", "tags", "created_at", "updated_at", "last_message_at"}
    assert first["title"] == "One" and first["tags"] == []
    times = [datetime.fromisoformat(item["last_message_at"]) for item in body["items"]]
    assert times == sorted(times, reverse=True)


async def test_pages_have_no_gaps_or_repeats_under_concurrent_inserts(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client, await server.client(customer) as writer:
        ids = await new_sessions(client, [f"Session {n}" for n in range(7)])
        expected = list(reversed(ids))
        pages: list[list[str]] = []
        async with server.http(customer) as http:
            body = await get_json(http, "/api/v1/sessions", params={"limit": 3})
            pages.append([item["id"] for item in body["items"]])
            # From here on, another connection keeps writing: new sessions, and turns on old ones, both on
            # pages not read yet (ids[1]) and on pages already read (ids[6]).

            async def write(rounds: range) -> None:
                for n in rounds:
                    await completed(writer, f"New {n}")
                    await completed(writer, f"More {n}", session_id=ids[1])
                    await completed(writer, f"Again {n}", session_id=ids[6])

            await write(range(1))  # before page 2, for certain
            writing = asyncio.create_task(write(range(1, 3)))  # and while the pages are read
            cursor = body["next_cursor"]
            while cursor:
                params: dict[str, Any] = {"limit": 3, "cursor": cursor}
                body = await get_json(http, "/api/v1/sessions", params=params)
                pages.append([item["id"] for item in body["items"]])
                cursor = body["next_cursor"]
                await asyncio.sleep(0)  # let the writer interleave between pages
            await writing
            seen = [i for page in pages for i in page]
            assert seen == expected  # each exactly once, in first-page order
            fresh = await list_all(http, limit=3)
    listed = [i for page in fresh for i in page]
    assert listed[:2] == [ids[6], ids[1]] and len(listed) == len(set(listed)) == 10


async def test_filters_title_tag_and_dates(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        ids = await new_sessions(
            client, ["Apple pie recipe", "apple crumble", "Banana bread", "100% juice_box", "Plain"]
        )
    async with server.http(customer) as http:
        response = await http.patch(f"/api/v1/sessions/{ids[2]}", json={"tags": ["baking"]})
        assert response.status_code == 200, response.text

        async def titles(**params: Any) -> list[str]:
            body = await get_json(http, "/api/v1/sessions", params=params)
            return sorted(item["title"] for item in body["items"])

        assert await titles(q="APPLE") == ["Apple pie recipe", "apple crumble"]
        assert await titles(q="%") == ["100% juice_box"]  # LIKE wildcards are literal
        assert await titles(q="_b") == ["100% juice_box"]
        assert await titles(tag="baking") == ["Banana bread"]
        assert await titles(tag="nope") == []
        listing = (await get_json(http, "/api/v1/sessions"))["items"]
        middle = next(item for item in listing if item["id"] == ids[2])["last_message_at"]
        assert await titles(since=middle) == ["100% juice_box", "Banana bread", "Plain"]
        assert await titles(until=middle) == ["Apple pie recipe", "apple crumble"]
        assert await titles(q="U", since=middle, limit=1) == ["100% juice_box"]


@pytest.mark.parametrize("cursor", ["garbage", "e30", "eyJ0IjoxfQ", "%00", "x" * 600])
async def test_bad_cursors_are_400(sqlite_server: LiveServer, cursor: str) -> None:
    async with sqlite_server.http(fresh_customer()) as http:
        response = await http.get("/api/v1/sessions", params={"cursor": cursor})
    assert response.status_code in (400, 422), response.text
    if response.status_code == 400:
        assert response.json()["code"] == "invalid_cursor"


async def test_a_cursor_only_continues_its_own_filters(sqlite_server: LiveServer) -> None:
    customer = fresh_customer()
    async with await sqlite_server.client(customer) as client:
        await new_sessions(client, ["apple one", "apple two"])
    async with sqlite_server.http(customer) as http:
        first = await get_json(http, "/api/v1/sessions", params={"q": "apple", "limit": 1})
        assert first["next_cursor"]
        other = await http.get("/api/v1/sessions", params={"q": "pear", "cursor": first["next_cursor"]})
        same = await http.get("/api/v1/sessions", params={"q": "apple", "cursor": first["next_cursor"]})
    assert other.status_code == 400 and other.json()["code"] == "invalid_cursor"
    assert same.status_code == 200 and len(same.json()["items"]) == 1


# -- rename, tags, delete ----------------------------------------------------------------------------


async def test_rename_and_tag(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        (session_id,) = await new_sessions(client, ["Untitled thoughts"])
    async with server.http(customer) as http:
        path = f"/api/v1/sessions/{session_id}"
        renamed = await http.patch(
            path, json={"title": "  Trip   plans ", "tags": ["travel", "2027", "travel"]}
        )
        assert renamed.status_code == 200, renamed.text
        assert (renamed.json()["title"], renamed.json()["tags"]) == ("Trip plans", ["2027", "travel"])
        untouched = await http.patch(path, json={"tags": []})
        assert (untouched.json()["title"], untouched.json()["tags"]) == ("Trip plans", [])
        for bad in [{"title": ""}, {"title": "a\x00b"}, {"tags": ["x"] * 21}, {"tags": [" "]}, {"color": 1}]:
            assert (await http.patch(path, json=bad)).status_code == 422, bad
    body = await session_json(server, customer, session_id)
    assert (body["title"], body["tags"]) == ("Trip plans", [])


async def test_delete_session_takes_its_messages(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        keep, doomed = await new_sessions(client, ["Keep me", "Delete me, zanzibar"])
    async with server.http(customer) as http:
        assert (await http.delete(f"/api/v1/sessions/{doomed}")).status_code == 204
        assert (await http.get(f"/api/v1/sessions/{doomed}")).status_code == 404
        again = await http.delete(f"/api/v1/sessions/{doomed}")
        assert again.status_code == 404 and again.json()["code"] == "session_not_found"
        listed = await get_json(http, "/api/v1/sessions")
        found = await get_json(http, "/api/v1/search", params={"q": "zanzibar"})
    assert [item["id"] for item in listed["items"]] == [keep]
    assert found["items"] == []
    assert await stored_counts(server, customer) == (1, 2)


async def test_delete_a_message_subtree_fixes_the_active_branch(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        first = await completed(client, "Root question")
        session_id = first.session_id or ""
        second = await completed(client, "Old follow-up", session_id=session_id)
        edited = await send_turn(
            client, branch_frame(session_id, "New follow-up", edit_of=second.user_message_id)
        )
        async with server.http(customer) as http:
            base = f"/api/v1/sessions/{session_id}/messages"
            assert (await http.delete(f"{base}/{edited.user_message_id}")).status_code == 204
            body = await get_json(http, f"/api/v1/sessions/{session_id}")
            ids = [first.user_message_id, first.ai_message_id, second.user_message_id, second.ai_message_id]
            assert [m["id"] for m in body["messages"]] == ids  # back on the remaining branch
            assert body["messages"][2]["sibling_ids"] == [second.user_message_id]
            for missing in (edited.ai_message_id, str(uuid.uuid4()), "nope"):
                gone = await http.delete(f"{base}/{missing}")
                assert gone.status_code == 404 and gone.json()["code"] == "message_not_found"
            assert (await http.delete(f"{base}/{first.user_message_id}")).status_code == 204
            empty = await get_json(http, f"/api/v1/sessions/{session_id}")
        assert (empty["messages"], empty["active_leaf_id"]) == ([], None)
        restart = await completed(client, "Starting over", session_id=session_id)
    body = await session_json(server, customer, session_id)
    assert [m["id"] for m in body["messages"]] == [restart.user_message_id, restart.ai_message_id]
    assert body["messages"][0]["parent_id"] is None


# -- export and import -------------------------------------------------------------------------------


def shape(export: dict[str, Any]) -> dict[str, Any]:
    """An export without ids and times: parents and the active leaf as positions in the list."""
    position = {m["id"]: n for n, m in enumerate(export["messages"])}
    keep = ("role", "content", "status", "reasoning", "model", "provider", "usage", "error_code")
    messages = [
        {**{k: m[k] for k in keep}, "parent": position.get(m["parent_id"])} for m in export["messages"]
    ]
    session = export["session"]
    return {
        "title": session["title"],
        "tags": session["tags"],
        "active": position.get(session["active_leaf_id"]),
        "messages": messages,
    }


async def branched_session(client: ChatClient) -> tuple[str, list[str]]:
    first = await completed(client, "Plan a picnic", options={"reasoning": "Think of food"})
    session_id = first.session_id or ""
    second = await completed(client, "With sandwiches", session_id=session_id)
    edited = await send_turn(client, branch_frame(session_id, "With salads", edit_of=second.user_message_id))
    ids = [first.user_message_id, first.ai_message_id, edited.user_message_id, edited.ai_message_id]
    return session_id, [str(i) for i in ids]


async def test_export_json_round_trips_through_import(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        session_id, path = await branched_session(client)
    async with server.http(customer) as http:
        await http.patch(f"/api/v1/sessions/{session_id}", json={"tags": ["food"]})
        exported = await get_json(http, f"/api/v1/sessions/{session_id}/export")
        assert exported["format"] == "parley.session.v1"
        assert len(exported["messages"]) == 6  # every branch
        assert exported["session"]["active_leaf_id"] == path[-1]
        imported = await http.post("/api/v1/sessions/import", json=exported)
        assert imported.status_code == 201, imported.text
        new_id = imported.json()["id"]
        assert new_id != session_id
        assert [m["content"] for m in imported.json()["messages"]] == [
            m["content"] for m in (await get_json(http, f"/api/v1/sessions/{session_id}"))["messages"]
        ]
        again = await get_json(http, f"/api/v1/sessions/{new_id}/export")
    assert shape(again) == shape(exported)
    assert not {m["id"] for m in again["messages"]} & {m["id"] for m in exported["messages"]}


async def test_import_refuses_what_is_not_a_tree(sqlite_server: LiveServer) -> None:
    def body(messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {"format": "parley.session.v1", "session": {"title": "x"}, "messages": messages}

    later_parent = [
        {"id": "b", "parent_id": "a", "role": "assistant", "content": "hi"},
        {"id": "a", "role": "user", "content": "hello"},
    ]
    repeated = [{"id": "a", "role": "user", "content": "x"}, {"id": "a", "role": "user", "content": "y"}]
    async with sqlite_server.http(fresh_customer()) as http:
        for messages in (later_parent, repeated):
            response = await http.post("/api/v1/sessions/import", json=body(messages))
            assert response.status_code == 400 and response.json()["code"] == "invalid_import"
        bad_role = await http.post(
            "/api/v1/sessions/import", json=body([{"id": "a", "role": "x", "content": ""}])
        )
        assert bad_role.status_code == 422
        listed = await get_json(http, "/api/v1/sessions")
    assert listed["items"] == []


async def test_export_markdown_is_the_active_branch(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        session_id, _ = await branched_session(client)
    async with server.http(customer) as http:
        response = await http.get(f"/api/v1/sessions/{session_id}/export", params={"format": "markdown"})
        detail = await get_json(http, f"/api/v1/sessions/{session_id}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/markdown")
    assert "attachment" in response.headers["content-disposition"]
    text = response.text
    assert text.startswith("# Plan a picnic\n")
    assert "With salads" in text and "With sandwiches" not in text
    assert "2 message(s) on other branches are not shown." in text
    for message in detail["messages"]:
        assert message["content"] in text
    assert text.index("With salads") < text.index(detail["messages"][3]["content"])


async def test_error_bodies_have_detail_and_code(sqlite_server: LiveServer) -> None:
    async with sqlite_server.http(fresh_customer()) as http:
        no_route = await http.get("/api/v1/nothing-here")
        json_type = {"Content-Type": "application/json"}
        not_json = await http.patch(
            f"/api/v1/sessions/{uuid.uuid4()}", content=b"\xff\xfe{", headers=json_type
        )
        bad_field = await http.get("/api/v1/sessions", params={"limit": 0})
    async with sqlite_server.http(None) as anonymous:
        no_token = await anonymous.get("/api/v1/sessions")
    assert (no_route.status_code, no_route.json()["code"]) == (404, "not_found")
    assert (not_json.status_code, not_json.json()["code"]) == (400, "invalid_request")
    assert (no_token.status_code, no_token.json()["code"]) == (401, "unauthorized")
    assert (bad_field.status_code, bad_field.json()["code"]) == (422, "invalid_request")
