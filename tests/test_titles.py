"""Session titles: from the first prompt at once; with PARLEY_AUTO_TITLE, a model-written one afterwards,
in the background (the turn never waits for it, and its failure changes nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley.titles import INSTRUCTION, clean_title, demo_title
from tests.conftest import LiveServer, live_server, make_settings, use_fake
from tests.history_helpers import completed, eventually, fresh_customer, session_json
from tests.providers.fake_openai import FakeOpenAI

LONG_PROMPT = "please help me plan a week of dinners with lots of parsnips and no fish"


@pytest.fixture
async def titled_server(tmp_path: Path, database_url: str | None) -> AsyncIterator[LiveServer]:
    async with live_server(make_settings(tmp_path, database_url, auto_title=True)) as live:
        yield live


@pytest.fixture
async def titled_gpt_server(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LiveServer]:
    use_fake(monkeypatch, fake_openai)
    settings = make_settings(tmp_path, auto_title=True, provider_attempts=1)
    async with live_server(settings) as live:
        yield live


async def title_of(server: LiveServer, customer: str, session_id: str) -> str:
    return str((await session_json(server, customer, session_id))["title"])


async def background_idle(server: LiveServer) -> None:
    """Wait until the supervisor runs nothing (the title task has ended, however it ended)."""

    async def idle() -> bool | None:
        return True if server.runtime.supervisor.busy == 0 else None

    await eventually(idle)


async def test_the_first_prompt_titles_a_session_and_nothing_else_by_default(server: LiveServer) -> None:
    customer = fresh_customer()
    async with await server.client(customer) as client:
        turn = await completed(client, "  Plan   a picnic\nfor Sunday ")
    assert await title_of(server, customer, turn.session_id or "") == "Plan a picnic for Sunday"
    await background_idle(server)
    assert await title_of(server, customer, turn.session_id or "") == "Plan a picnic for Sunday"


async def test_demo_model_writes_a_deterministic_title(titled_server: LiveServer) -> None:
    customer = fresh_customer()
    async with await titled_server.client(customer) as client:
        turn = await completed(client, LONG_PROMPT)
        session_id = turn.session_id or ""

        async def retitled() -> str | None:
            title = await title_of(titled_server, customer, session_id)
            return title if title != LONG_PROMPT else None

        assert await eventually(retitled) == "Please help me plan a week"
        async with titled_server.http(customer) as http:
            await http.patch(f"/api/v1/sessions/{session_id}", json={"title": "Mine"})
        await completed(client, "and desserts too, several of them please", session_id=session_id)
    await background_idle(titled_server)
    assert await title_of(titled_server, customer, session_id) == "Mine"  # only a first answer is titled


async def test_model_title_comes_later_without_holding_the_turn(
    titled_gpt_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(text_chunks=["Here is a plan."])
    fake_openai.script(text_chunks=['"Parsnip dinner', ' week."'], delay_s=1.0)
    customer = fresh_customer()
    async with await titled_gpt_server.client(customer) as client:
        turn = await completed(client, LONG_PROMPT, model="gpt-4o-mini")
        session_id = turn.session_id or ""
        assert await title_of(titled_gpt_server, customer, session_id) == LONG_PROMPT  # not waited for

    async def retitled() -> str | None:
        title = await title_of(titled_gpt_server, customer, session_id)
        return title if title != LONG_PROMPT else None

    assert await eventually(retitled) == "Parsnip dinner week"
    request = fake_openai.requests[1]
    assert request["messages"][0] == {"role": "system", "content": INSTRUCTION}
    assert LONG_PROMPT in request["messages"][1]["content"]
    assert "Here is a plan." in request["messages"][1]["content"]


async def test_a_failed_title_request_changes_nothing(
    titled_gpt_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(text_chunks=["Fine."])
    fake_openai.fail(500)
    customer = fresh_customer()
    async with await titled_gpt_server.client(customer) as client:
        turn = await completed(client, LONG_PROMPT, model="gpt-4o-mini")
    await background_idle(titled_gpt_server)
    assert len(fake_openai.requests) == 2
    assert await title_of(titled_gpt_server, customer, turn.session_id or "") == LONG_PROMPT


async def test_a_rename_meanwhile_wins(titled_gpt_server: LiveServer, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(text_chunks=["Fine."])
    fake_openai.script(text_chunks=["Model title"], delay_s=0.5)
    customer = fresh_customer()
    async with await titled_gpt_server.client(customer) as client:
        turn = await completed(client, LONG_PROMPT, model="gpt-4o-mini")
    async with titled_gpt_server.http(customer) as http:
        await http.patch(f"/api/v1/sessions/{turn.session_id}", json={"title": "My own title"})
    await background_idle(titled_gpt_server)
    assert len(fake_openai.requests) == 2
    assert await title_of(titled_gpt_server, customer, turn.session_id or "") == "My own title"


def test_clean_title() -> None:
    assert clean_title('Title: "Weekly dinner plan."\nExtra line') == "Weekly dinner plan"
    assert clean_title("  **trip ideas**  ") == "Trip ideas"
    assert clean_title("\n\n  \n") is None
    assert clean_title("«»") is None
    assert len(clean_title("word " * 100) or "") <= 80
    assert demo_title("one two three four five six seven") == "One two three four five six"
    assert demo_title("why?") == "Why"
