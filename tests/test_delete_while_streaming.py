"""Deleting a session, or the branch holding an answer, while that answer streams (docs/history.md): the
turn is stopped as a cancel stops it, its ``cancelled`` event saying ``session_deleted``; nothing of it is
kept, and another customer's turns, or the customer's turns elsewhere, go on."""

from __future__ import annotations

from tests.conftest import LiveServer
from tests.invariants import TurnSummary, check_turn
from tests.resume_helpers import TEXT, drop, resumed
from tests.wsclient import ChatClient

LONG = {"text": TEXT, "chunks": 300, "delay_ms": 20}  # six seconds: still streaming when deleted


async def streaming(client: ChatClient, prompt: str = "Go on") -> tuple[str, str]:
    """A long turn, once it streams: its request_id and session id."""
    rid = await client.chat(prompt, options=LONG)
    first = await client.wait_for(rid, "text")
    return rid, str(first["session_id"])


def stopped_as_deleted(turn: TurnSummary) -> None:
    assert turn.kinds[-3:] == ["cancelled", "dbOperationExecuted", "fullProcessComplete"]
    assert turn.status == "cancelled"
    assert turn.only("cancelled")["code"] == "session_deleted"
    assert turn.text != TEXT


async def test_deleting_the_session_stops_its_streaming_answer(server: LiveServer) -> None:
    async with await server.client() as owner, await server.client() as other:
        rid, session = await streaming(owner)
        elsewhere, _ = await streaming(other, "Another chat")  # the same customer, another session
        async with server.http() as http:
            assert (await http.delete(f"/api/v1/sessions/{session}")).status_code == 204
            stopped_as_deleted(check_turn(await owner.events(rid)))
            assert (await http.get(f"/api/v1/sessions/{session}")).status_code == 404
            await other.send({"type": "cancel", "request_id": elsewhere})
            assert check_turn(await other.events(elsewhere)).status == "cancelled"  # it was still running


async def test_deleting_the_question_stops_the_answer_below_it(server: LiveServer) -> None:
    async with await server.client() as owner:
        first = await owner.chat("First", options={"text": "A short answer.", "chunks": 2})
        kept = check_turn(await owner.events(first))
        assert kept.session_id is not None
        rid = await owner.chat("Second", options=LONG, session_id=kept.session_id)
        await owner.wait_for(rid, "text")
        async with server.http() as http:
            view = (await http.get(f"/api/v1/sessions/{kept.session_id}")).json()
            question = view["messages"][-2]
            assert question["role"] == "user" and view["messages"][-1]["status"] == "streaming"
            url = f"/api/v1/sessions/{kept.session_id}/messages/{question['id']}"
            assert (await http.delete(url)).status_code == 204
            stopped_as_deleted(check_turn(await owner.events(rid)))
            after = (await http.get(f"/api/v1/sessions/{kept.session_id}")).json()
        assert [m["content"] for m in after["messages"]] == ["First", "A short answer."]


async def test_a_detached_answer_is_stopped_too_and_its_end_can_be_read_back(
    sqlite_server: LiveServer,
) -> None:
    owner = await sqlite_server.client()
    rid, session = await streaming(owner)
    await drop(owner, "abort")
    async with sqlite_server.http() as http:
        assert (await http.delete(f"/api/v1/sessions/{session}")).status_code == 204
    async with await sqlite_server.client() as again:
        stopped_as_deleted(check_turn(await resumed(again, rid, -1)))


async def test_another_customer_cannot_stop_an_answer_by_deleting(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client(1) as owner:
        rid, session = await streaming(owner)
        async with sqlite_server.http(2) as stranger:
            assert (await stranger.delete(f"/api/v1/sessions/{session}")).status_code == 404
        await owner.send({"type": "cancel", "request_id": rid})
        turn = check_turn(await owner.events(rid))
    assert "code" not in turn.only("cancelled")  # stopped by its own customer's cancel, not the stranger
