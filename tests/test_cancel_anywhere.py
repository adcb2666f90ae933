"""Cancel from anywhere (docs/protocol.md section 5): a ``cancel`` naming a turn, from any connection of
the same customer, and ``POST /api/v1/turns/{request_id}/cancel``; another customer can neither stop nor
see it."""

from __future__ import annotations

import asyncio

from tests.conftest import LiveServer
from tests.invariants import check_turn
from tests.resume_helpers import SLOW, TEXT, drop, nothing_else, resumed, stored_answer
from tests.wsclient import ChatClient

LONG = {"text": TEXT, "chunks": 300, "delay_ms": 20}  # six seconds: always still running when stopped


async def started(client: ChatClient, options: dict[str, object] = LONG) -> str:
    """Send a long turn and wait until it streams."""
    rid = await client.chat("Go on", options=options)
    await client.wait_for(rid, "text")
    return rid


async def test_a_cancel_from_another_connection_stops_the_turn(server: LiveServer) -> None:
    async with await server.client() as owner, await server.client() as remote:
        rid = await started(owner)
        await remote.send({"type": "cancel", "request_id": rid})
        turn = check_turn(await owner.events(rid))
        await nothing_else(remote)  # the canceller follows nothing: it gets nothing
    assert turn.status == "cancelled" and turn.kinds[-3:] == [
        "cancelled",
        "dbOperationExecuted",
        "fullProcessComplete",
    ]
    assert turn.session_id is not None
    stored = await stored_answer(server, "1", turn.session_id)
    assert stored["status"] == "cancelled" and stored["content"] == turn.text
    assert TEXT.startswith(turn.text) and turn.text != TEXT


async def test_a_detached_turn_can_be_cancelled_and_its_end_read_back(sqlite_server: LiveServer) -> None:
    owner = await sqlite_server.client()
    rid = await started(owner)
    await drop(owner, "abort")
    async with await sqlite_server.client() as remote:
        await remote.send({"type": "cancel", "request_id": rid})
        turn = check_turn(await resumed(remote, rid, -1))
    assert turn.status == "cancelled"
    assert turn.session_id is not None
    stored = await stored_answer(sqlite_server, "1", turn.session_id)
    assert stored["content"] == turn.text and stored["status"] == "cancelled"


async def test_another_customers_cancel_is_ignored(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client(1) as owner, await sqlite_server.client(2) as stranger:
        rid = await owner.chat("Mine", options={"text": TEXT, "chunks": 300, "delay_ms": 1})
        await owner.wait_for(rid, "text")
        await stranger.send({"type": "cancel", "request_id": rid})
        await nothing_else(stranger)
        async with sqlite_server.http(2) as http:
            assert (await http.post(f"/api/v1/turns/{rid}/cancel")).status_code == 404
        turn = check_turn(await owner.events(rid))
    assert turn.status == "completed" and turn.text == TEXT


async def test_rest_cancel_answers_202_while_running_and_404_otherwise(server: LiveServer) -> None:
    async with await server.client() as owner, server.http() as http:
        rid = await started(owner)
        response = await http.post(f"/api/v1/turns/{rid}/cancel")
        assert response.status_code == 202, response.text
        assert response.json() == {"request_id": rid, "status": "cancelling"}
        turn = check_turn(await owner.events(rid))
        assert turn.status == "cancelled"
        after = await http.post(f"/api/v1/turns/{rid}/cancel")
        unknown = await http.post("/api/v1/turns/no-such-turn/cancel")
    assert after.status_code == unknown.status_code == 404
    assert (
        after.json()
        == unknown.json()
        == {
            "detail": "No running turn of yours has that request_id.",
            "code": "turn_not_found",
        }
    )


async def test_rest_cancel_needs_a_token(sqlite_server: LiveServer) -> None:
    async with sqlite_server.http(None) as http:
        assert (await http.post("/api/v1/turns/r1/cancel")).status_code == 401


async def test_rest_cancel_of_a_queued_turn_on_a_gone_connection(sqlite_server: LiveServer) -> None:
    owner = await sqlite_server.client()
    first = await started(owner, {"chunks": 100, "delay_ms": 10})
    queued = await owner.chat("Later", options={"chunks": 3})
    await drop(owner, "close")
    async with sqlite_server.http() as http:
        assert (await http.post(f"/api/v1/turns/{queued}/cancel")).status_code == 202
    async with await sqlite_server.client() as reader:
        stopped = check_turn(await resumed(reader, queued, -1))
        await resumed(reader, first, -1)
    assert stopped.status == "cancelled" and stopped.text == ""
    assert stopped.kinds == ["working", "cancelled", "dbOperationExecuted", "fullProcessComplete"]


async def test_an_unnamed_cancel_stops_the_turns_a_connection_follows(sqlite_server: LiveServer) -> None:
    """A tab that reloaded and resumed a turn stops it with a plain ``cancel``, as the one that sent it."""
    owner = await sqlite_server.client()
    rid = await started(owner)
    await drop(owner, "abort")
    async with await sqlite_server.client() as tab:
        await tab.send({"type": "resume", "request_id": rid, "after_seq": -1})
        await tab.wait_for(rid, "text")
        await tab.send({"type": "cancel"})
        turn = check_turn(await tab.events(rid))
    assert turn.status == "cancelled"


async def test_a_cancel_from_elsewhere_reaches_every_follower(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client() as owner, await sqlite_server.client() as tab:
        rid = await started(owner, SLOW | {"delay_ms": 20})
        await tab.send({"type": "resume", "request_id": rid, "after_seq": -1})
        await tab.wait_for(rid, "text")
        async with sqlite_server.http() as http:
            assert (await http.post(f"/api/v1/turns/{rid}/cancel")).status_code == 202
        mine, theirs = await asyncio.gather(owner.events(rid), tab.events(rid))
    assert mine == theirs and check_turn(mine).status == "cancelled"
