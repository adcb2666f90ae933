"""Branches: edit and regenerate over the WebSocket, switching and continuing branches, the model's context.

Every turn goes through ``check_turn``; branch refusals keep the bracket of a refused turn and store
nothing. The context tests read what the model was sent from a fake OpenAI server.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.history_helpers import branch_frame, completed, fresh_customer, send_turn, session_json
from tests.providers.fake_openai import FakeOpenAI
from tests.test_turn_paths import stored_counts
from tests.wsclient import ChatClient


async def two_turns(client: ChatClient) -> tuple[str, list[str]]:
    """A session with two completed turns: its id and [u1, a1, u2, a2]."""
    first = await completed(client, "First question")
    second = await completed(client, "Second question", session_id=first.session_id or "")
    ids = [first.user_message_id, first.ai_message_id, second.user_message_id, second.ai_message_id]
    return first.session_id or "", [str(i) for i in ids]


def path_of(body: dict[str, Any]) -> list[str]:
    return [m["id"] for m in body["messages"]]


# -- edit --------------------------------------------------------------------------------------------


async def test_edit_makes_a_sibling_branch_and_makes_it_active(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        session_id, (u1, a1, u2, _a2) = await two_turns(client)
        edited = await send_turn(client, branch_frame(session_id, "Second, reworded", edit_of=u2))
    assert edited.status == "completed" and edited.session_id == session_id
    assert edited.user_message_id not in (u1, u2)

    body = await session_json(server, customer, session_id)
    assert path_of(body) == [u1, a1, edited.user_message_id, edited.ai_message_id]
    assert body["active_leaf_id"] == edited.ai_message_id
    new_question = body["messages"][2]
    assert new_question["content"] == "Second, reworded"
    assert new_question["parent_id"] == a1
    assert new_question["sibling_ids"] == [u2, edited.user_message_id]
    assert body["messages"][3]["sibling_ids"] == [edited.ai_message_id]
    assert body["messages"][0]["sibling_ids"] == [u1]
    assert body["messages"][3]["content"] == edited.text


async def test_editing_the_first_prompt_starts_a_new_root(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        session_id, (u1, _a1, _u2, _a2) = await two_turns(client)
        edited = await send_turn(client, branch_frame(session_id, "Another start", edit_of=u1))
    body = await session_json(server, customer, session_id)
    assert path_of(body) == [edited.user_message_id, edited.ai_message_id]
    assert body["messages"][0]["parent_id"] is None
    assert body["messages"][0]["sibling_ids"] == [u1, edited.user_message_id]


# -- regenerate --------------------------------------------------------------------------------------


async def test_regenerate_adds_an_answer_beside_the_old_one(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        session_id, (u1, a1, u2, a2) = await two_turns(client)
        before = await stored_counts(server, customer)
        again = await send_turn(
            client, branch_frame(session_id, regenerate=a2, options={"text": "Take two."})
        )
    assert again.status == "completed" and again.text == "Take two."
    assert again.user_message_id == u2  # the stored question, answered again
    assert again.ai_message_id not in (a1, a2)
    assert await stored_counts(server, customer) == (before[0], before[1] + 1)  # only the new answer

    body = await session_json(server, customer, session_id)
    assert path_of(body) == [u1, a1, u2, again.ai_message_id]
    assert body["messages"][3]["parent_id"] == u2
    assert body["messages"][3]["sibling_ids"] == [a2, again.ai_message_id]
    assert body["messages"][2]["sibling_ids"] == [u2]


async def test_regenerate_takes_a_user_message_too_and_ignores_a_prompt(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        session_id, (_u1, _a1, u2, a2) = await two_turns(client)
        again = await send_turn(client, branch_frame(session_id, "ignored", regenerate=u2))
    assert again.status == "completed" and again.user_message_id == u2
    body = await session_json(server, customer, session_id)
    assert body["messages"][-1]["sibling_ids"] == [a2, again.ai_message_id]
    assert "ignored" not in [m["content"] for m in body["messages"]]


async def test_regenerate_in_the_snake_dialect(sqlite_server: LiveServer) -> None:
    customer = fresh_customer()
    async with await sqlite_server.client(customer, dialect="snake") as client:
        first = await completed(client, "Snake question")
        again = await send_turn(
            client, branch_frame(first.session_id or "", regenerate=first.ai_message_id or "")
        )
    assert again.status == "completed" and again.user_message_id == first.user_message_id


# -- switching and continuing ------------------------------------------------------------------------


async def test_switching_branch_then_continuing_it(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        session_id, (u1, a1, u2, a2) = await two_turns(client)
        edited = await send_turn(client, branch_frame(session_id, "Other second", edit_of=u2))
        async with server.http(customer) as http:
            switched = await http.put(f"/api/v1/sessions/{session_id}/active-leaf", json={"message_id": u2})
        assert switched.status_code == 200, switched.text
        assert path_of(switched.json()) == [u1, a1, u2, a2]
        assert switched.json()["active_leaf_id"] == a2  # followed down from u2 by the newest child
        assert (await session_json(server, customer, session_id))["active_leaf_id"] == a2

        third = await completed(client, "Third, on the old branch", session_id=session_id)
    body = await session_json(server, customer, session_id)
    assert path_of(body) == [u1, a1, u2, a2, third.user_message_id, third.ai_message_id]
    assert body["messages"][4]["parent_id"] == a2
    assert body["messages"][2]["sibling_ids"] == [u2, edited.user_message_id]


async def test_switching_to_a_middle_message_follows_the_newest_child(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        session_id, (u1, a1, u2, _a2) = await two_turns(client)
        edited = await send_turn(client, branch_frame(session_id, "Newest branch", edit_of=u2))
        async with server.http(customer) as http:
            await http.put(f"/api/v1/sessions/{session_id}/active-leaf", json={"message_id": u2})
            switched = await http.put(f"/api/v1/sessions/{session_id}/active-leaf", json={"message_id": a1})
    assert path_of(switched.json()) == [u1, a1, edited.user_message_id, edited.ai_message_id]


async def test_concurrent_turns_on_one_session_chain_instead_of_forking(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as one, await server.client(customer) as two:
        first = await completed(one, "Start")
        session_id = first.session_id or ""
        slow = {"chunks": 5, "delay_ms": 20}
        ids = await asyncio.gather(
            one.chat("From one", session_id=session_id, options=slow),
            two.chat("From two", session_id=session_id, options=slow),
        )
        turns = await asyncio.gather(one.turn(ids[0]), two.turn(ids[1]))
    assert all(t.status == "completed" for t in turns)
    body = await session_json(server, customer, session_id)
    assert len(body["messages"]) == 6  # one path through every message: nothing hidden on a fork
    assert all(m["sibling_ids"] == [m["id"]] for m in body["messages"])


# -- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "target", "code"),
    [
        ("edit_of", "unknown", "message_not_found"),
        ("edit_of", "malformed", "message_not_found"),
        ("edit_of", "other-session", "message_not_found"),
        ("edit_of", "other-customer", "message_not_found"),
        ("edit_of", "assistant", "invalid_request"),
        ("regenerate", "unknown", "message_not_found"),
        ("regenerate", "other-customer", "message_not_found"),
    ],
)
async def test_branch_targets_outside_the_session_are_refused(
    server: LiveServer, field: str, target: str, code: str
) -> None:
    customer, intruder = fresh_customer(), fresh_customer()
    async with await server.client(customer) as client, await server.client(intruder) as other:
        session_id, (_u1, a1, u2, _a2) = await two_turns(client)
        elsewhere = await completed(client, "Another session of mine")
        foreign = await completed(other, "Someone else's")
        targets = {
            "unknown": str(uuid.uuid4()),
            "malformed": "not-a-uuid",
            "other-session": elsewhere.user_message_id,
            "other-customer": foreign.user_message_id,
            "assistant": a1,
        }
        before = await stored_counts(server, customer)
        refused = await send_turn(client, branch_frame(session_id, "Nope", **{field: targets[target] or ""}))
    assert refused.status == "error" and refused.error is not None
    assert (refused.error["stage"], refused.error["code"]) == ("validation", code)
    assert refused.kinds == ["working", "error", "fullProcessComplete"]
    assert await stored_counts(server, customer) == before
    assert path_of(await session_json(server, customer, session_id))[-2] == u2


async def test_branch_requests_need_one_field_and_a_session(sqlite_server: LiveServer) -> None:
    customer = fresh_customer()
    async with await sqlite_server.client(customer) as client:
        session_id, (_u1, _a1, u2, a2) = await two_turns(client)
        both = await send_turn(client, branch_frame(session_id, "x", edit_of=u2, regenerate=a2))
        no_session = await send_turn(client, branch_frame("", regenerate=a2))
        foreign_session = await send_turn(client, branch_frame(str(uuid.uuid4()), regenerate=a2))
        wrong_type = await send_turn(client, branch_frame(session_id, "x", edit_of=5))  # type: ignore[arg-type]
    for refused, code in [
        (both, "invalid_request"),
        (no_session, "invalid_request"),  # not prompt_required: regenerate needs no prompt
        (foreign_session, "session_not_found"),
        (wrong_type, "invalid_request"),
    ]:
        assert refused.error is not None and refused.error["code"] == code, refused.error
        assert refused.kinds == ["working", "error", "fullProcessComplete"]


# -- what the model is sent --------------------------------------------------------------------------


def sent(fake: FakeOpenAI, index: int) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in fake.requests[index]["messages"]]


async def test_the_context_is_the_path_to_the_parent(gpt_server: LiveServer, fake_openai: FakeOpenAI) -> None:
    for answer in ("Answer A", "Answer B", "Answer C", "Answer C2", "Answer D"):
        fake_openai.script(text_chunks=[answer])
    customer, gpt = fresh_customer(), {"model": "gpt-4o-mini"}
    async with await gpt_server.client(customer) as client:
        first = await completed(client, "Question A", **gpt)
        session_id = first.session_id or ""
        second = await completed(client, "Question B", session_id=session_id, **gpt)
        edited = await send_turn(
            client, branch_frame(session_id, "Question C", edit_of=second.user_message_id, **gpt)
        )
        again = await send_turn(client, branch_frame(session_id, regenerate=edited.ai_message_id, **gpt))
        async with gpt_server.http(customer) as http:
            put = {"message_id": second.ai_message_id}
            assert (await http.put(f"/api/v1/sessions/{session_id}/active-leaf", json=put)).status_code == 200
        await completed(client, "Question D", session_id=session_id, **gpt)
    a = [("user", "Question A"), ("assistant", "Answer A")]
    assert sent(fake_openai, 1) == [*a, ("user", "Question B")]
    assert sent(fake_openai, 2) == [*a, ("user", "Question C")]  # never the branch it replaces
    assert sent(fake_openai, 3) == [*a, ("user", "Question C")]  # regenerate: same question, no old answer
    assert again.text == "Answer C2"
    b = [("user", "Question B"), ("assistant", "Answer B")]
    assert sent(fake_openai, 4) == [*a, *b, ("user", "Question D")]  # the switched-to branch only
