"""Every history route refuses other customers' data with the answer an unknown id gets, and changes nothing.

``ROUTES`` must name every operation under ``/api/v1/sessions`` in the OpenAPI description, so a new route
cannot ship without being checked here.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.history_helpers import branch_frame, completed, fresh_customer, get_json, send_turn

# (method, path, JSON body); {s} is a session id, {m} a message id.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/v1/sessions/{s}", None),
    ("PATCH", "/api/v1/sessions/{s}", {"title": "Hijacked", "tags": ["mine"]}),
    ("DELETE", "/api/v1/sessions/{s}", None),
    ("PUT", "/api/v1/sessions/{s}/active-leaf", {"message_id": "{m}"}),
    ("DELETE", "/api/v1/sessions/{s}/messages/{m}", None),
    ("GET", "/api/v1/sessions/{s}/export", None),
    ("GET", "/api/v1/sessions/{s}/export?format=markdown", None),
]
UNSCOPED = {("GET", "/api/v1/sessions"), ("POST", "/api/v1/sessions/import")}  # no id: tested below


def fill(template: str, session_id: str, message_id: str) -> str:
    return template.replace("{s}", session_id).replace("{m}", message_id)


def body_of(body: dict[str, Any] | None, message_id: str) -> dict[str, Any] | None:
    return (
        None
        if body is None
        else {k: fill(v, "", message_id) if isinstance(v, str) else v for k, v in body.items()}
    )


@pytest.fixture
async def owned(server: LiveServer) -> dict[str, str]:
    """A branched session of one customer, and a session of an intruder."""
    owner, intruder = fresh_customer(), fresh_customer()
    async with await server.client(owner) as client, await server.client(intruder) as other:
        first = await completed(client, "The owner's secret: quince")
        second = await completed(client, "More secrets", session_id=first.session_id or "")
        await send_turn(
            client, branch_frame(first.session_id or "", "Edited secret", edit_of=second.user_message_id)
        )
        theirs = await completed(other, "The intruder's own session")
    return {
        "owner": owner,
        "intruder": intruder,
        "session": first.session_id or "",
        "message": second.user_message_id or "",
        "intruder_session": theirs.session_id or "",
    }


async def snapshot(server: LiveServer, owned: dict[str, str]) -> Any:
    """Everything stored about the owner's session (its export without the export time)."""
    async with server.http(owned["owner"]) as http:
        export = await get_json(http, f"/api/v1/sessions/{owned['session']}/export")
    del export["exported_at"]
    return export


@pytest.mark.parametrize(("method", "template", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_another_customers_ids_are_404_and_change_nothing(
    server: LiveServer, owned: dict[str, str], method: str, template: str, body: dict[str, Any] | None
) -> None:
    before = await snapshot(server, owned)
    async with server.http(owned["intruder"]) as http:
        foreign = await http.request(
            method, fill(template, owned["session"], owned["message"]), json=body_of(body, owned["message"])
        )
        unknown = await http.request(
            method, fill(template, str(uuid.uuid4()), owned["message"]), json=body_of(body, owned["message"])
        )
        # The intruder's own session, with the owner's message id in it.
        mixed = await http.request(
            method,
            fill(template, owned["intruder_session"], owned["message"]),
            json=body_of(body, owned["message"]),
        )
    assert foreign.status_code == 404, foreign.text
    assert foreign.json() == unknown.json() == {"detail": "Session not found.", "code": "session_not_found"}
    assert "quince" not in foreign.text
    if "{m}" in template:
        assert mixed.status_code == 404 and mixed.json()["code"] == "message_not_found"
    assert await snapshot(server, owned) == before


async def test_listing_search_and_import_only_ever_show_your_own(
    server: LiveServer, owned: dict[str, str]
) -> None:
    async with server.http(owned["intruder"]) as http:
        listed = await get_json(http, "/api/v1/sessions")
        found = await get_json(http, "/api/v1/search", params={"q": "quince"})
        filtered = await get_json(http, "/api/v1/sessions", params={"q": "secret"})
    assert [item["id"] for item in listed["items"]] == [owned["intruder_session"]]
    assert found["items"] == [] and filtered["items"] == []
    async with server.http(owned["owner"]) as http:
        mine = await get_json(http, "/api/v1/search", params={"q": "quince"})
    assert [hit["session_id"] for hit in mine["items"]] == [owned["session"]] * len(mine["items"]) != []


async def test_every_session_route_is_covered(sqlite_server: LiveServer) -> None:
    async with sqlite_server.http(None) as http:
        paths = (await http.get("/openapi.json")).json()["paths"]
    documented = {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/api/v1/sessions")
        for method in operations
    }
    tested = {
        (m, p.split("?")[0].replace("{s}", "{session_id}").replace("{m}", "{message_id}"))
        for m, p, _ in ROUTES
    }
    assert documented == tested | UNSCOPED


@pytest.mark.parametrize(("method", "template", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_malformed_ids_are_404(
    sqlite_server: LiveServer, method: str, template: str, body: dict[str, Any] | None
) -> None:
    async with sqlite_server.http(fresh_customer()) as http:
        response = await http.request(method, fill(template, "not-a-uuid", "x"), json=body_of(body, "x"))
    assert response.status_code == 404
    assert response.json()["code"] == "session_not_found"
