"""The built-in tools through the registry: current_time, calculator and search_sessions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from parley.tools import ToolCall, ToolContext, ToolRegistry, builtin_tools
from parley.tools.base import SearchHitLike
from parley.tools.builtin import plain_snippet

NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)


@dataclass(frozen=True)
class Hit:
    message_id: uuid.UUID
    session_id: uuid.UUID
    session_title: str
    role: str
    snippet: str
    created_at: datetime


@dataclass
class FakeSearch:
    """Records who was searched for; answers from a fixed per-customer index."""

    index: dict[str, list[Hit]]
    calls: list[tuple[str, str, int, int]] = field(default_factory=list)

    async def __call__(
        self, customer_id: str, query: str, limit: int, offset: int
    ) -> Sequence[SearchHitLike]:
        self.calls.append((customer_id, query, limit, offset))
        return self.index.get(customer_id, [])[:limit]


def hit(title: str, snippet: str) -> Hit:
    return Hit(uuid.uuid4(), uuid.uuid4(), title, "assistant", snippet, NOW)


@pytest.fixture
def search() -> FakeSearch:
    return FakeSearch(
        {
            "alice": [hit("Trip to Lyon", "the <mark>train</mark> leaves at 9 &amp; arrives at 11")],
            "bob": [hit("Bob's secrets", "<mark>train</mark> password is hunter2")],
        }
    )


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry(builtin_tools(clock=lambda: NOW))


def context(search: FakeSearch, customer_id: str = "alice") -> ToolContext:
    return ToolContext(customer_id=customer_id, search=search)


async def test_current_time_defaults_to_utc(registry: ToolRegistry, search: FakeSearch) -> None:
    result = await registry.run(ToolCall("c1", "current_time", {}), context(search))
    assert not result.is_error
    assert json.loads(result.output) == {
        "timezone": "UTC",
        "datetime": "2026-03-14T15:09:26+00:00",
        "weekday": "Saturday",
        "utc_offset": "+0000",
        "unix": int(NOW.timestamp()),
    }


async def test_current_time_in_a_named_zone(registry: ToolRegistry, search: FakeSearch) -> None:
    result = await registry.run(ToolCall("c1", "current_time", {"timezone": "Asia/Tokyo"}), context(search))
    data = json.loads(result.output)
    assert data["datetime"] == "2026-03-15T00:09:26+09:00"
    assert data["weekday"] == "Sunday"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/passwd", "Europe"])
async def test_current_time_rejects_unknown_zones(
    registry: ToolRegistry, search: FakeSearch, zone: str
) -> None:
    result = await registry.run(ToolCall("c1", "current_time", {"timezone": zone}), context(search))
    assert result.is_error
    assert result.code == "unknown_timezone"
    assert "Unknown time zone" in result.output and "IANA" in result.output


async def test_calculator_tool(registry: ToolRegistry, search: FakeSearch) -> None:
    ok = await registry.run(ToolCall("c1", "calculator", {"expression": "(2 + 3) * 4"}), context(search))
    assert (ok.output, ok.is_error) == ("20", False)
    bad = await registry.run(ToolCall("c2", "calculator", {"expression": "1 / 0"}), context(search))
    assert bad.is_error and bad.code == "invalid_expression" and "Division by zero" in bad.output
    code = await registry.run(
        ToolCall("c3", "calculator", {"expression": "os.system('id')"}), context(search)
    )
    assert (code.output, code.is_error) == ("Attribute access (os.system) is not allowed.", True)


async def test_search_uses_the_contexts_customer(registry: ToolRegistry, search: FakeSearch) -> None:
    result = await registry.run(
        ToolCall("c1", "search_sessions", {"query": "train", "limit": 3}), context(search, "alice")
    )
    assert not result.is_error
    assert search.calls == [("alice", "train", 3, 0)]
    data = json.loads(result.output)
    assert data["query"] == "train"
    [found] = data["results"]
    assert found["session_title"] == "Trip to Lyon"
    assert found["snippet"] == "the train leaves at 9 & arrives at 11"
    assert found["created_at"] == "2026-03-14T15:09:26+00:00"
    assert "hunter2" not in result.output


async def test_search_cannot_be_pointed_at_another_customer(
    registry: ToolRegistry, search: FakeSearch
) -> None:
    result = await registry.run(
        ToolCall("c1", "search_sessions", {"query": "train", "customer_id": "bob"}), context(search, "alice")
    )
    assert result.is_error and result.code == "invalid_arguments"
    assert "customer_id" in result.output
    assert search.calls == []  # refused before any search


async def test_search_default_limit_and_no_results(registry: ToolRegistry, search: FakeSearch) -> None:
    result = await registry.run(
        ToolCall("c1", "search_sessions", {"query": "nothing"}), context(search, "carol")
    )
    assert search.calls == [("carol", "nothing", 5, 0)]
    assert json.loads(result.output) == {"query": "nothing", "results": []}


async def test_search_limit_is_bounded(registry: ToolRegistry, search: FakeSearch) -> None:
    result = await registry.run(
        ToolCall("c1", "search_sessions", {"query": "x", "limit": 500}), context(search)
    )
    assert result.is_error and result.code == "invalid_arguments"


def test_plain_snippet() -> None:
    assert plain_snippet("a <mark>b</mark> &lt;c&gt;") == "a b <c>"
