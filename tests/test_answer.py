"""Text deltas with and without coalescing: the first goes at once, nothing is lost or reordered."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from parley.answer import Answer, TextSender
from tests.conftest import live_server, make_settings


def sender(window_s: float) -> tuple[TextSender, list[str], Answer]:
    sent: list[str] = []
    answer = Answer()

    def emit(piece: str) -> str:
        sent.append(piece)
        return piece

    return TextSender(emit, answer, window_s), sent, answer


async def test_without_a_window_every_delta_is_an_event() -> None:
    text, sent, answer = sender(0)
    for piece in "abc":
        text.add(piece)
    assert sent == ["a", "b", "c"]
    assert answer.text == sent


async def test_window_merges_a_burst_after_sending_the_first_at_once() -> None:
    text, sent, answer = sender(10.0)  # long enough that only flush() releases the rest
    for piece in "abcd":
        text.add(piece)
    assert sent == ["a"]
    text.flush()
    assert sent == ["a", "bcd"]
    assert answer.content == "abcd"


async def test_window_timer_releases_pending_text() -> None:
    released = asyncio.Event()
    sent: list[str] = []

    def emit(piece: str) -> str:
        sent.append(piece)
        if len(sent) == 2:
            released.set()
        return piece

    text = TextSender(emit, Answer(), 0.02)
    text.add("a")
    text.add("b")
    text.add("c")
    await asyncio.wait_for(released.wait(), 2)
    assert sent == ["a", "bc"]


async def test_coalescing_server_keeps_every_invariant(tmp_path: Path) -> None:
    async with (
        live_server(make_settings(tmp_path, coalesce_ms=50)) as server,
        await server.client() as client,
    ):
        full = "".join(f"{i:03d}" for i in range(200))
        done = await client.turn(await client.chat("burst", options={"text": full, "chunks": 200}))
        assert done.text == full
        texts = [e["content"] for e in done.events if e["type"] == "text"]
        assert texts[0] == "000"  # the first delta is never delayed
        assert len(texts) < 200
        rid = await client.chat("slow", options={"text": full, "chunks": 200, "delay_ms": 5})
        await client.wait_for(rid, "text")
        await client.send({"type": "cancel", "request_id": rid})
        cancelled = await client.turn(rid)
    assert cancelled.status == "cancelled"
    rows = await server.store.session_messages(uuid.UUID(cancelled.session_id or ""))
    assert rows[1].content == cancelled.text  # stored == exactly what was sent
