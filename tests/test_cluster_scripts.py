"""The Redis side of scale-out, without server processes: the append script's fence and order, the takeover's,
the cancel flag, and a batch's round trip. Against a Redis db of this test's own (``redis_url``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from parley.cluster.batches import Batch, pack, rebuild
from parley.cluster.keys import CHANNEL, log_key, member, meta_key
from parley.cluster.link import Link
from parley.protocol import Kind
from tests.cluster_helpers import redis_url

__all__ = ["redis_url"]  # a fixture, used by name

CUSTOMER, REQUEST = "c:1", "r{1}"
KEYS = [log_key(CUSTOMER, REQUEST), meta_key(CUSTOMER, REQUEST)]
TTL_MS = 60_000


@pytest.fixture
async def link(redis_url: str) -> AsyncIterator[Link]:
    connected = Link(redis_url)
    await connected.load_scripts()
    yield connected
    await connected.aclose()


def body(text: str) -> str:
    return f'"content":"{text}"'


async def append(
    link: Link, owner: str, token: str, first: int, texts: list[str], reset: bool = False, ended: bool = False
) -> list[Any]:
    """The append script as a flush runs it: ``texts`` as text events from seq ``first``."""
    joined, ends = pack([body(t) for t in texts])
    kinds = bytes([Kind.TEXT] * len(texts))
    args = [owner, token, first, len(texts), kinds, ends, joined, TTL_MS, int(reset), int(ended), "s1", 0]
    reply: list[Any] = await link.script("append", KEYS, args)
    return reply


async def entries(link: Link) -> list[tuple[int, int, str]]:
    return [e for _, fields in await link.redis.xrange(KEYS[0]) for e in Batch.of(fields).events()]


async def test_batches_land_in_order_and_a_repeat_or_a_gap_is_refused(link: Link) -> None:
    assert (await append(link, "p1", "t1", 0, ["a", "b"], reset=True))[0] == 0
    assert (await append(link, "p1", "t1", 2, ["c"]))[0] == 0
    assert await append(link, "p1", "t1", 2, ["c"]) == [-3, 3]  # the same batch again: refused, says where
    assert await append(link, "p1", "t1", 5, ["f"]) == [-3, 3]  # a gap: refused
    assert [seq for seq, _, _ in await entries(link)] == [0, 1, 2]
    ids = [entry_id for entry_id, _ in await link.redis.xrange(KEYS[0])]
    assert ids == [b"0-2", b"0-3"], "entry ids come from the seqs: Redis refuses one out of order itself"
    assert rebuild(await entries(link), 2).content == "abc"


async def test_a_process_that_lost_the_turn_cannot_append(link: Link) -> None:
    await append(link, "p1", "t1", 0, ["a"], reset=True)
    # Another process closes the turn (its owner was taken for dead), fenced on the owner it saw.
    joined, ends = pack([body("closed")])
    closing = [0, 0, bytes([Kind.ERROR]), ends, joined, TTL_MS, "s1", 0]
    assert await link.script("takeover", KEYS, ["p1", "p2", 1, 1, *closing[2:]]) == 1
    assert await link.script("takeover", KEYS, ["p1", "p3", 2, 1, *closing[2:]]) == 0, "closed once"
    assert await append(link, "p1", "t1", 1, ["late"]) == [-2]
    assert await append(link, "p1", "t1", 0, ["again"], reset=True) == [-2], "not even by starting over"
    assert [seq for seq, _, _ in await entries(link)] == [0, 1]
    assert await link.redis.hget(KEYS[1], "owner") == b"p2"


async def test_a_stream_redis_lost_is_written_again_from_the_start(link: Link) -> None:
    await append(link, "p1", "t1", 0, ["a", "b"], reset=True)
    await link.redis.delete(*KEYS)  # Redis restarted without persistence
    assert await append(link, "p1", "t1", 2, ["c"]) == [-1]
    assert (await append(link, "p1", "t1", 0, ["a", "b", "c"], reset=True))[0] == 0
    assert rebuild(await entries(link), 2).content == "abc"


async def test_a_request_id_of_a_running_turn_is_not_taken_over_by_another_turn(link: Link) -> None:
    await append(link, "p1", "t1", 0, ["a"], reset=True)
    assert await append(link, "p2", "t2", 0, ["x"], reset=True) == [-4]
    await append(link, "p1", "t1", 1, ["b"], ended=True)
    assert (await append(link, "p2", "t2", 0, ["x"], reset=True))[0] == 0, "once it ended, the id is free"
    assert rebuild(await entries(link), 0).content == "x"


async def test_a_cancel_sets_the_flag_the_owner_sees_at_its_next_flush(link: Link) -> None:
    assert await link.script("cancel", [KEYS[1]], [member(CUSTOMER, REQUEST), CHANNEL]) == 0  # no such turn
    await append(link, "p1", "t1", 0, ["a"], reset=True)
    assert await link.script("cancel", [KEYS[1]], [member(CUSTOMER, REQUEST), CHANNEL]) == 2
    assert (await append(link, "p1", "t1", 1, ["b"])) == [0, b"1"]
    await append(link, "p1", "t1", 2, ["c"], ended=True)
    assert await link.script("cancel", [KEYS[1]], [member(CUSTOMER, REQUEST), CHANNEL]) == 1  # ended


def test_a_batch_round_trips_any_text() -> None:
    texts = ["plain", 'quo"te', "naïve ☃ 𝄞", "", "\\n"]
    bodies = [body(t) for t in texts]
    joined, ends = pack(bodies)
    fields = {
        b"f": b"7",
        b"k": bytes([Kind.TEXT] * 5),
        b"e": ends,
        b"b": joined.encode(),
        b"s": b"s",
        b"ss": b"3",
    }
    batch = Batch.of(fields)
    assert [(seq, text) for seq, _, text in batch.events()] == list(zip(range(7, 12), bodies, strict=True))
    assert (batch.session, batch.session_seq) == ("s", 3)


def test_an_answer_rebuilt_from_its_events_has_its_text_reasoning_and_tool_steps() -> None:
    call = '"content":{"call_id":"c1","name":"calculator","input":{"expression":"1+1"}}'
    result = '"content":{"call_id":"c1","output":"2","is_error":false}'
    events = [
        (0, Kind.WORKING, '"content":{}'),
        (1, Kind.REASONING, '"content":"hm"'),
        (2, Kind.TEXT, '"content":"Let me "'),
        (3, Kind.TOOL_USE, call),
        (4, Kind.TOOL_RESULT, result),
        (5, Kind.TEXT, '"content":"2."'),
    ]
    live = rebuild(events, 5)
    assert (live.content, live.reasoning, live.seq) == ("Let me 2.", "hm", 5)
    assert live.tool_steps == [
        {
            "text": "Let me ",
            "calls": [{"id": "c1", "name": "calculator", "input": {"expression": "1+1"}}],
            "results": [{"call_id": "c1", "output": "2", "is_error": False}],
        }
    ]


def test_the_keys_of_one_turn_are_apart_from_every_other_turns() -> None:
    assert log_key("a:b", "c") != log_key("a", "b:c")
    assert meta_key(str(uuid.uuid4()), "r") != meta_key(str(uuid.uuid4()), "r")
