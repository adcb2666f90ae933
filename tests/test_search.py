"""Full-text search over a customer's messages: ranking, prefixes, snippets, paging and scope."""

from __future__ import annotations

from typing import Any

from parley.store.search import snippet, terms_of
from tests.conftest import LiveServer
from tests.history_helpers import completed, eventually, fresh_customer, get_json
from tests.invariants import TurnSummary
from tests.wsclient import ChatClient


async def note(client: ChatClient, prompt: str) -> TurnSummary:
    """A turn whose answer does not repeat the prompt (the demo model's default answer quotes it)."""
    return await completed(client, prompt, options={"text": "Noted."})


async def search(server: LiveServer, customer: str, q: str, **params: Any) -> dict[str, Any]:
    async with server.http(customer) as http:
        body: dict[str, Any] = await get_json(http, "/api/v1/search", params={"q": q, **params})
    return body


async def test_ranked_hits_name_session_and_message(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        weak = await note(
            client, "A long note about the garden, the weather, the neighbours and, once, a parsnip."
        )
        strong = await note(client, "Parsnip soup: parsnip, more parsnip.")
        await note(client, "Nothing to see here")
    body = await search(server, customer, "parsnip")
    hits = body["items"]
    assert [h["message_id"] for h in hits] == [strong.user_message_id, weak.user_message_id]
    top = hits[0]
    assert top["session_id"] == strong.session_id
    assert top["session_title"] == "Parsnip soup: parsnip, more parsnip."
    assert top["score"] > hits[1]["score"]
    assert set(top) == {"session_id", "session_title", "message_id", "role", "snippet", "created_at", "score"}
    assert body["next_cursor"] is None


async def test_words_match_as_prefixes_any_case_all_required(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        both = await note(client, "Kohlrabi and Fennel gratin")
        await note(client, "Kohlrabi only")
    assert [h["message_id"] for h in (await search(server, customer, "KOHL fenn"))["items"]] == [
        both.user_message_id
    ]
    assert len((await search(server, customer, "kohlrabi"))["items"]) == 2
    assert (await search(server, customer, "?!* ()"))["items"] == []  # no words: nothing, not an error
    assert (await search(server, customer, "kohlrabis"))["items"] == []


async def test_snippets_escape_html_and_mark_matches(server: LiveServer) -> None:
    customer = fresh_customer()
    prompt = "Use <b>bold</b> & say turnip " + " ".join(f"w{n}" for n in range(60)) + " turnip end"
    async with await server.client(customer) as client:
        await note(client, prompt)
    (hit,) = (await search(server, customer, "turnip"))["items"]
    assert "<mark>turnip</mark>" in hit["snippet"]
    assert "&lt;b&gt;bold&lt;/b&gt; &amp;" in hit["snippet"]
    assert "<b>" not in hit["snippet"]
    assert hit["snippet"].endswith("…")


async def test_answers_are_searchable_once_finished(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        rid = await client.chat("Tell me", options={"text": "Rutabaga forever", "chunks": 8, "delay_ms": 100})
        await client.wait_for(rid, "text")
        assert (await search(server, customer, "rutabaga"))["items"] == []  # still streaming
        turn = await client.turn(rid)
    (hit,) = (await search(server, customer, "rutabaga"))["items"]
    assert (hit["message_id"], hit["role"]) == (turn.ai_message_id, "assistant")


async def test_search_pages_and_scope(server: LiveServer) -> None:
    owner, other = fresh_customer(), fresh_customer()
    async with await server.client(owner) as client, await server.client(other) as stranger:
        for n in range(3):
            await note(client, f"Celeriac note {n}")
        await note(stranger, "Celeriac secrets of someone else")
    first = await search(server, owner, "celeriac", limit=2)
    second = await search(server, owner, "celeriac", limit=2, cursor=first["next_cursor"])
    ids = [h["message_id"] for page in (first, second) for h in page["items"]]
    assert len(ids) == len(set(ids)) == 3 and second["next_cursor"] is None
    theirs = await search(server, other, "celeriac")
    assert [h["session_title"] for h in theirs["items"]] == ["Celeriac secrets of someone else"]
    async with server.http(owner) as http:
        wrong = await http.get("/api/v1/search", params={"q": "other", "cursor": first["next_cursor"]})
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_cursor"


async def test_scores_and_order_depend_on_the_customers_messages_alone(server: LiveServer) -> None:
    """Another customer writing the same rare word a dozen times (and much else) changes nothing in a
    customer's scores or order: no search reveals whether, or how often, other customers use a word."""
    owner, other = fresh_customer(), fresh_customer()
    queries = ("quokka", "quok lake", "notes")
    async with await server.client(owner) as client:
        await note(client, "Quokka sighting at the lake, then a quokka again by the lake")
        await note(client, "One quokka")
        await note(client, "Lunch notes: nothing special, no quokka")
        await note(client, "Lake notes")

    async def ranking() -> list[list[tuple[str, float]]]:
        pages = [await search(server, owner, q) for q in queries]
        return [[(h["message_id"], h["score"]) for h in page["items"]] for page in pages]

    before = await ranking()
    assert [len(hits) for hits in before] == [3, 1, 2]
    async with await server.client(other) as client:
        for n in range(12):
            await note(client, f"quokka {n} by the lake " + "and notes " * n)
        await note(client, "A long message about other things entirely. " * 30)
    assert len((await search(server, other, "quokka"))["items"]) == 12
    assert await ranking() == before


async def test_deleted_messages_leave_the_index(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        turn = await note(client, "Salsify is a vegetable")
    async with server.http(customer) as http:
        path = f"/api/v1/sessions/{turn.session_id}/messages/{turn.user_message_id}"
        assert (await http.delete(path)).status_code == 204

    async def gone() -> bool | None:
        return True if not (await search(server, customer, "salsify"))["items"] else None

    assert await eventually(gone)


def test_terms_and_snippet_units() -> None:
    assert terms_of("Hello, hello WORLD_wide 'quoted' ü") == ["hello", "world", "wide", "quoted", "ü"]
    assert terms_of("x" * 100) == ["x" * 64]
    assert len(terms_of(" ".join(f"t{n}" for n in range(40)))) == 16
    assert snippet("", ["a"]) == ""
    assert snippet("<i>", ["a"]) == "&lt;i&gt;"
    text = "one two three " * 20 + "needle here"
    assert snippet(text, ["needle"]).startswith("…") and "<mark>needle</mark> here" in snippet(
        text, ["needle"]
    )
    assert snippet("Needles and NEEDLE", ["needle"]) == "<mark>Needles</mark> and <mark>NEEDLE</mark>"
