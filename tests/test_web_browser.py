"""The built-in chat page in a real browser: Playwright driving the distribution's Chromium against a real
server with the demo model. Things are found by the names of issue 14 ("Names a browser test can rely on",
docs/web.md), as a test outside this repo would, and the rest (Settings, Rename, Delete) by their labels;
what the page shows is checked against the REST API. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    Locator,
    Page,
    Playwright,
    WebSocketRoute,
    async_playwright,
    expect,
)

from parley.connection import Connection
from parley.uvicorn_ws import abort_transport
from tests.conftest import IN_CI, LiveServer, live_server, make_settings
from tests.resume_helpers import TEXT, resume_frame, text_of
from tests.test_cli import ServeProcess, cli_env, free_port, parley_serve
from tests.test_recovery import kill_group

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
NUMBERS = TEXT.split()  # "0000" … "0299": every delta says where it belongs
SLOW = {"text": TEXT, "chunks": 300, "delay_ms": 12}  # about 3.6 s

# One event loop for the module, so that one Chromium (launched once, below) serves every test; each test
# still gets fresh browser contexts (their own storage) and its own server.
pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return CHROMIUM


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as started:
        yield started


async def launch(playwright: Playwright, chromium: Path) -> Browser:
    # Wheel scrolls land at once, not over an animation that a re-render of the log could cut short.
    return await playwright.chromium.launch(
        executable_path=str(chromium), args=["--disable-smooth-scrolling"]
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_browser(playwright: Playwright, chromium: Path) -> AsyncIterator[list[Browser]]:
    """The module's Chromium (in a list, so that a test can replace one that crashed)."""
    browsers = [await launch(playwright, chromium)]
    yield browsers
    await browsers[0].close()


@pytest_asyncio.fixture(loop_scope="module")
async def browser(
    shared_browser: list[Browser], playwright: Playwright, chromium: Path
) -> AsyncIterator[Browser]:
    """The shared Chromium; the contexts (pages) a test opens are closed after it."""
    if not shared_browser[0].is_connected():
        shared_browser[0] = await launch(playwright, chromium)
    launched = shared_browser[0]
    before = set(launched.contexts)
    yield launched
    for context in launched.contexts:
        if context not in before:
            await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def dev(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """A dev server (the page signs itself in), on SQLite."""
    async with live_server(make_settings(tmp_path, dev=True)) as live:
        yield live


@pytest_asyncio.fixture(loop_scope="module")
async def sqlite_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """As conftest's, on this module's event loop."""
    async with live_server(make_settings(tmp_path)) as live:
        yield live


async def open_page(browser: Browser, url: str, **context: Any) -> Page:
    """A fresh page, with its own storage."""
    page = await (await browser.new_context(**context)).new_page()
    page.set_default_timeout(15_000)
    await page.goto(url)
    return page


async def no_script_errors(page: Page) -> None:
    errors = await page.page_errors(filter="all")
    assert not errors, f"uncaught script errors: {errors}"


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, dev: LiveServer) -> AsyncIterator[Page]:
    opened = await open_page(browser, dev.http_url + "/")
    await expect(message_box(opened)).to_be_visible()
    yield opened
    await no_script_errors(opened)


def message_box(page: Page) -> Locator:
    return page.locator('textarea[aria-label="Message"]')


def answers(page: Page) -> Locator:
    return page.locator('[role="log"] [data-role="assistant"]')


def questions(page: Page) -> Locator:
    return page.locator('[role="log"] [data-role="user"]')


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


async def set_options(page: Page, options: dict[str, Any] | None, tools: tuple[str, ...] = ()) -> None:
    """The demo model's script (docs/protocol.md section 7), through the page's Settings."""
    settings = page.locator("details.settings")
    if not await settings.evaluate("(d) => d.open"):
        await settings.locator("summary").click()
    await page.locator('textarea[aria-label="Model options"]').fill(json.dumps(options) if options else "")
    for tool in tools:
        await page.get_by_label(tool, exact=True).check()


async def send(page: Page, prompt: str, options: dict[str, Any] | None = None) -> Locator:
    """Send ``prompt``; the answer's element (the last one once it appears)."""
    if options is not None:
        await set_options(page, options)
    count = await answers(page).count()
    await message_box(page).fill(prompt)
    await page.get_by_role("button", name="Send").click()
    await expect(answers(page)).to_have_count(count + 1)
    return answers(page).nth(count)


async def stored_session(live: LiveServer, session_id: str) -> dict[str, Any]:
    async with live.http() as http:
        response = await http.get(f"/api/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def drop_connections(live: LiveServer) -> None:
    """Cut every WebSocket of the server from its side, as a crashed proxy or a network loss would."""
    connections = [cast(Connection, c) for c in live.runtime.supervisor.idlers]
    assert connections, "no connection to drop"
    for connection in connections:
        assert abort_transport(connection.ws)


def session_of(page: Page) -> str:
    session = page.url.partition("?session=")[2]
    assert session, f"the URL names no session: {page.url}"
    return session


async def words(element: Locator) -> list[str]:
    return (await element.inner_text()).split()


async def streaming_with_text(answer: Locator) -> None:
    """Wait until the answer shows some text while it still streams."""
    await expect(answer).to_have_attribute("data-status", "streaming")
    await expect(answer).to_contain_text("0003")
    assert await answer.get_attribute("data-status") == "streaming", "the answer ended before it was seen"


# -- sign-in ------------------------------------------------------------------------------------------


async def test_parley_serve_dev_signs_the_page_in_by_itself(browser: Browser, tmp_path: Path) -> None:
    async with parley_serve(tmp_path, cli_env(tmp_path / "data"), "--dev") as server:
        page = await open_page(browser, server.http_url + "/")
        await expect(message_box(page)).to_be_visible()
        await expect(page.locator('input[aria-label="Token"]')).to_be_hidden()
        answer = await send(page, "Hello from the browser")
        await expect(answer).to_have_attribute("data-status", "completed")
        await expect(answer).to_contain_text('You said: "Hello from the browser"')
        await expect(page.locator('nav[aria-label="Sessions"] a')).to_have_text(["Hello from the browser"])
        await shot(page, "chat")

        # The picker offers what /api/v1/models says answers (on a dev server, demo stands in for the rest).
        picker = page.locator('select[aria-label="Model"]')
        await expect(picker.locator("option")).to_have_text(["demo", "claude-mini"])
        await picker.select_option("claude-mini")
        await message_box(page).press_sequentially("Line one")
        await message_box(page).press("Shift+Enter")
        await message_box(page).press_sequentially("line two")
        await message_box(page).press("Enter")
        await expect(questions(page).last).to_have_text("Line one\nline two")
        await expect(answers(page).last).to_have_attribute("data-status", "completed")
        token = {"Authorization": f"Bearer {server.dev_token()}"}
        async with httpx.AsyncClient(base_url=server.http_url, headers=token) as http:
            stored = (await http.get(f"/api/v1/sessions/{session_of(page)}")).json()["messages"]
        assert [m["model"] for m in stored if m["role"] == "assistant"] == ["demo", "claude-mini"]

        # A dev token that stops working is replaced by a fresh one, without a word to the reader.
        await page.evaluate("() => localStorage.setItem('parley.token', 'expired')")
        await page.locator('input[aria-label="Search sessions"]').fill("Line")
        await page.wait_for_function("() => localStorage.getItem('parley.token')?.startsWith('eyJ')")
        await expect(page.locator('nav[aria-label="Sessions"] a')).to_have_text(["Hello from the browser"])
        await expect(message_box(page)).to_be_visible()
        await no_script_errors(page)


async def test_without_dev_the_page_asks_for_a_token_once(
    browser: Browser, sqlite_server: LiveServer
) -> None:
    page = await open_page(browser, sqlite_server.http_url + "/")
    token_field = page.locator('input[aria-label="Token"]')
    await expect(token_field).to_be_visible()
    await token_field.fill("not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator('[role="alert"]')).to_contain_text("did not accept")
    await expect(message_box(page)).to_be_hidden()
    await shot(page, "sign-in")
    await token_field.fill(sqlite_server.token("7"))
    await page.get_by_role("button", name="Sign in").click()
    await expect(message_box(page)).to_be_visible()
    answer = await send(page, "Who am I")
    await expect(answer).to_have_attribute("data-status", "completed")
    async with sqlite_server.http("7") as http:
        assert [s["title"] for s in (await http.get("/api/v1/sessions")).json()["items"]] == ["Who am I"]
    await page.reload()  # the token is kept for the origin
    await expect(message_box(page)).to_be_visible()
    await expect(token_field).to_be_hidden()
    await expect(page.locator('nav[aria-label="Sessions"] a')).to_have_text(["Who am I"])

    await page.get_by_role("button", name="Sign out").click()  # and another customer signs in
    await token_field.fill(sqlite_server.token("8"))
    await token_field.press("Enter")
    await expect(message_box(page)).to_be_visible()
    await expect(page.locator('nav[aria-label="Sessions"] a')).to_have_count(0)
    await expect(questions(page)).to_have_count(0)
    answer = await send(page, "Someone else")
    await expect(answer).to_have_attribute("data-status", "completed")
    await expect(page.locator('nav[aria-label="Sessions"] a')).to_have_text(["Someone else"])

    # A token that stops working (it expired) sends the reader back to the sign-in, saying why.
    await page.evaluate("() => localStorage.setItem('parley.token', 'expired')")
    await page.locator('input[aria-label="Search sessions"]').fill("Someone")
    await expect(token_field).to_be_visible()
    await expect(page.locator('[role="alert"]')).to_contain_text("no longer accepted")
    await no_script_errors(page)


# -- streaming, stop, resume ---------------------------------------------------------------------------


async def test_the_answer_grows_before_it_ends_and_the_log_follows_it(page: Page) -> None:
    lines = "".join(f"{n:04d}\n\n" for n in range(120))  # a paragraph each: far taller than the window
    tall = {"text": lines, "chunks": 120, "delay_ms": 15}
    answer = await send(page, "Count for me", tall)
    await streaming_with_text(answer)
    log = page.locator('[role="log"]')
    await expect(answer).to_have_attribute("data-status", "completed")
    assert await words(answer) == lines.split()
    assert await answer.get_attribute("data-message-id")
    at_bottom = "(log) => log.scrollTop > 0 && log.scrollHeight - log.scrollTop - log.clientHeight < 48"
    assert await log.evaluate(at_bottom), "the log did not follow the answer down"

    # Scrolled up by the reader, the log stays where it is while the next answer grows.
    answer = await send(page, "Again", tall)
    await expect(answer).to_contain_text("0010")
    await log.hover()
    await page.mouse.wheel(0, -100_000)
    away = "() => { const log = document.querySelector('[role=log]'); return log.scrollTop < 48; }"
    await page.wait_for_function(away)
    top, height = await log.evaluate("(log) => [log.scrollTop, log.scrollHeight]")
    await expect(answer).to_have_attribute("data-status", "completed")
    assert await log.evaluate("(log) => log.scrollTop") == top  # not pulled down again
    assert await log.evaluate("(log) => log.scrollHeight") > height  # it grew meanwhile, out of sight


async def test_stop_keeps_exactly_what_the_server_stored(page: Page, dev: LiveServer) -> None:
    answer = await send(page, "Count slowly", SLOW)
    await streaming_with_text(answer)
    await page.get_by_role("button", name="Stop").click()
    await expect(answer).to_have_attribute("data-status", "cancelled")
    await expect(page.get_by_role("button", name="Send")).to_be_visible()
    shown = await words(answer)
    stored = (await stored_session(dev, session_of(page)))["messages"][-1]
    assert stored["status"] == "cancelled" and stored["id"] == await answer.get_attribute("data-message-id")
    assert shown == stored["content"].split()
    assert 3 < len(shown) < len(NUMBERS) and shown == NUMBERS[: len(shown)]
    await shot(page, "stopped")


async def test_a_reload_mid_answer_picks_it_up_where_it_was(page: Page, dev: LiveServer) -> None:
    answer = await send(page, "Count through a reload", SLOW)
    await streaming_with_text(answer)
    session = session_of(page)
    await page.reload()
    answer = answers(page).last
    # Followed live from where the stored partial ends, not read again once the turn is over.
    await expect(answer).to_have_attribute("data-status", "streaming")
    await expect(answer).to_have_attribute("data-status", "completed")
    assert await words(answer) == NUMBERS
    assert session_of(page) == session
    assert (await stored_session(dev, session))["messages"][-1]["content"].split() == NUMBERS


async def test_a_socket_dropped_by_the_server_reconnects_and_resumes(page: Page, dev: LiveServer) -> None:
    answer = await send(page, "Count through a drop", SLOW)
    await streaming_with_text(answer)
    drop_connections(dev)
    await expect(answer).to_have_attribute("data-status", "completed")
    assert await words(answer) == NUMBERS


async def test_a_resume_too_late_shows_the_stored_answer(browser: Browser, tmp_path: Path) -> None:
    """Reconnected after the turn ended and its events were forgotten: stream_expired, then REST."""
    async with live_server(make_settings(tmp_path, dev=True)) as live:
        page = await open_page(browser, live.http_url + "/")
        answer = await send(page, "Count through a long outage", SLOW)
        await streaming_with_text(answer)
        request_id = (await stored_session(live, session_of(page)))["messages"][-1]["request_id"]
        forgotten = asyncio.Event()

        async def held(route: WebSocketRoute) -> None:  # the page's next connection waits for that
            await forgotten.wait()
            route.connect_to_server()

        await page.context.route_web_socket(re.compile(r"/chat/ws"), held)
        drop_connections(live)
        async with await live.client() as follower:  # the turn runs to its end, meanwhile
            await follower.send(resume_frame(request_id, -1))
            assert text_of(await follower.events(request_id)).split() == NUMBERS
        turn = live.runtime.streams.find("1", request_id)
        assert turn is not None
        live.runtime.streams.forget(turn)  # as if PARLEY_RESUME_TTL_S had passed
        forgotten.set()
        await expect(answer).to_have_attribute("data-status", "completed")
        assert await words(answer) == NUMBERS
        await no_script_errors(page)


def serve_dev_on(workdir: Path, port: int, name: str) -> ServeProcess:
    """``parley serve --dev`` on ``port`` in its own process group, so it can be killed as a crash would."""
    env = cli_env(workdir / "data", PARLEY_PORT=str(port), PARLEY_CHECKPOINT_INTERVAL_S="0.5")
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley", "serve", "--dev"],
            env=env,
            cwd=workdir,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    return ServeProcess(proc, port, out, err)


async def test_a_server_that_dies_mid_answer_leaves_what_it_kept(browser: Browser, tmp_path: Path) -> None:
    """kill -9, then a new server on the same port: the page reconnects, its resume finds nothing, and it
    shows the answer as stored, closed as interrupted (docs/protocol.md section 5.4)."""
    port = free_port()
    first = serve_dev_on(tmp_path, port, "first")
    try:
        await first.wait_healthy()
        page = await open_page(browser, first.http_url + "/")
        answer = await send(page, "Count until the crash", {**SLOW, "delay_ms": 20})
        await expect(answer).to_contain_text("0080")  # a checkpoint (every 0.5 s) has stored some of it
        kill_group(first)
        second = serve_dev_on(tmp_path, port, "second")
        try:
            await second.wait_healthy()
            await expect(answer).to_have_attribute("data-status", "error", timeout=20_000)
            token = {"Authorization": f"Bearer {second.dev_token()}"}
            async with httpx.AsyncClient(base_url=second.http_url, headers=token) as http:
                stored = (await http.get(f"/api/v1/sessions/{session_of(page)}")).json()["messages"][-1]
            assert stored["status"] == "error" and stored["error_code"] == "interrupted"
            shown = await words(answer)
            assert shown == stored["content"].split() and 0 < len(shown) < len(NUMBERS)
            await no_script_errors(page)
        finally:
            second.stop()
    finally:
        first.stop()


# -- branches, sessions -------------------------------------------------------------------------------


async def test_edit_and_regenerate_make_branches_the_switcher_walks(page: Page, dev: LiveServer) -> None:
    first = await send(page, "Plan a picnic", {"text": "Bring sandwiches."})
    await expect(first).to_have_attribute("data-status", "completed")
    await set_options(page, {"text": "Bring a cake."})
    await first.get_by_role("button", name="Regenerate").click()
    answer = answers(page).last
    await expect(answer).to_have_text("Bring a cake.")
    await expect(answer).to_have_attribute("data-status", "completed")
    log = page.locator('[role="log"]')
    await expect(log).to_contain_text("2/2")
    await page.get_by_role("button", name="Previous branch").click()
    await expect(answers(page).last).to_have_text("Bring sandwiches.")
    await expect(log).to_contain_text("1/2")
    await page.get_by_role("button", name="Next branch").click()
    await expect(answers(page).last).to_have_text("Bring a cake.")

    await set_options(page, {"text": "Strawberries."})
    await questions(page).last.get_by_role("button", name="Edit").click()
    await message_box(page).fill("Plan a dessert")
    await page.get_by_role("button", name="Send").click()
    await expect(answers(page)).to_have_count(1)
    await expect(answers(page).last).to_have_text("Strawberries.")
    await expect(questions(page).last).to_have_text("Plan a dessert")
    await expect(answers(page).last).to_have_attribute("data-status", "completed")
    await expect(log).to_contain_text("2/2")
    await shot(page, "branches")
    await page.get_by_role("button", name="Previous branch").click()
    await expect(questions(page).last).to_have_text("Plan a picnic")
    await expect(answers(page).last).to_have_text("Bring a cake.")  # that branch as it was left
    stored = await stored_session(dev, session_of(page))
    assert [m["content"] for m in stored["messages"]] == ["Plan a picnic", "Bring a cake."]


async def test_sessions_list_search_rename_delete_and_deep_link(
    browser: Browser, dev: LiveServer, page: Page
) -> None:
    prompts = ["Plan a picnic", "Fix the bike", "Learn the flute"]
    for prompt in prompts:
        await page.get_by_role("button", name="New chat").click()
        await expect(questions(page)).to_have_count(0)
        await expect(await send(page, prompt)).to_have_attribute("data-status", "completed")
    nav = page.locator('nav[aria-label="Sessions"]')
    links = nav.locator("a")
    await expect(links).to_have_text(prompts[::-1])  # newest first
    await shot(page, "sessions")

    search = page.locator('input[aria-label="Search sessions"]')
    await search.fill("bike")
    await expect(links).to_have_text(["Fix the bike"])
    await search.fill("demo")  # a word of the answers, not of any title
    await expect(links).to_have_count(3)
    await search.fill("")
    await expect(links).to_have_count(3)

    bike = nav.locator("li", has=page.get_by_role("link", name="Fix the bike"))
    await bike.get_by_role("button", name="Rename").click()
    await nav.get_by_role("textbox").fill("Bicycle repairs")
    await nav.get_by_role("textbox").press("Enter")
    await expect(links).to_have_text(["Learn the flute", "Bicycle repairs", "Plan a picnic"])
    bike_id = await links.nth(1).get_attribute("href")
    assert bike_id and bike_id.startswith("?session=")

    # A deep link (a shared URL) opens that session, in another tab with its own storage.
    other = await open_page(browser, f"{dev.http_url}/{bike_id}")
    await expect(questions(other)).to_have_text(["Fix the bike"])
    await expect(other.get_by_role("heading", name="Bicycle repairs")).to_be_visible()
    await other.get_by_role("link", name="Plan a picnic").click()
    await expect(questions(other)).to_have_text(["Plan a picnic"])
    assert session_of(other) != bike_id.partition("=")[2]
    await other.go_back()
    await expect(questions(other)).to_have_text(["Fix the bike"])

    await (
        nav.locator("li", has=page.get_by_role("link", name="Plan a picnic"))
        .get_by_role("button", name="Delete")
        .click()
    )
    await expect(links).to_have_text(["Learn the flute", "Bicycle repairs"])
    async with dev.http() as http:
        assert [s["title"] for s in (await http.get("/api/v1/sessions")).json()["items"]] == [
            "Learn the flute",
            "Bicycle repairs",
        ]


PICNIC = """Here is a plan for **Sunday**, from [the park's page](https://example.com/park):

1. Pack the basket by 10:00
2. Walk to the park by the river
3. Find a shady spot near the water

| What | Who brings it |
|---|---|
| Sandwiches | Ana |
| Lemonade | Ben |
| A blanket | you |

A reminder for the phone:

```python
alarm("Sunday 09:30", "Picnic: leave at 10")
```
"""


async def test_markdown_is_rendered(page: Page) -> None:
    """Paragraphs, lists, tables, code and links; also the README's screenshot (docs/screenshot.png is
    artifacts/screenshots/markdown.png)."""
    for prompt in ("Fix the bike's back brake", "Learn three chords on the ukulele"):
        await expect(await send(page, prompt)).to_have_attribute("data-status", "completed")
        await page.get_by_role("button", name="New chat").click()
    first = await send(page, "Plan a picnic for Sunday", {"text": "Bring sandwiches and lemonade."})
    await expect(first).to_have_attribute("data-status", "completed")
    await set_options(page, {"text": PICNIC, "chunks": 60})
    await page.locator("details.settings summary").click()  # closed again, for the picture
    await first.get_by_role("button", name="Regenerate").click()
    answer = answers(page).last
    await expect(answer).to_have_attribute("data-status", "completed")
    await expect(answer.locator("strong")).to_have_text("Sunday")
    await expect(answer.locator("ol > li")).to_have_count(3)
    await expect(answer.locator("table th")).to_have_text(["What", "Who brings it"])
    await expect(answer.locator("table tbody tr")).to_have_count(3)
    await expect(answer.locator("pre code")).to_contain_text('alarm("Sunday 09:30"')
    await expect(answer.get_by_role("link", name="the park's page")).to_have_attribute(
        "href", "https://example.com/park"
    )
    await expect(page.locator('[role="log"]')).to_contain_text("2/2")
    await page.set_viewport_size({"width": 1200, "height": 760})
    await shot(page, "markdown")


# -- tool steps, reasoning, errors, untrusted output -----------------------------------------------------


async def test_a_tool_turn_shows_its_steps_and_reasoning(page: Page) -> None:
    script = {
        "reasoning": "The user wants arithmetic.",
        "tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}],
        "tool_text": "Let me compute. ",
    }
    await set_options(page, script, tools=("calculator",))
    answer = await send(page, "What is 6*7?")
    await expect(answer).to_have_attribute("data-status", "completed")
    for view in ("live", "stored"):
        tool = answer.locator('details[data-tool-name="calculator"]')
        await expect(tool).to_have_count(1)
        await tool.locator("summary").click()
        await expect(tool).to_contain_text("6*7")
        await expect(tool).to_contain_text("42")
        reasoning = answer.locator('details[data-kind="reasoning"]').first
        await reasoning.locator("summary").click()
        await expect(reasoning).to_contain_text("The user wants arithmetic.")
        await expect(answer).to_contain_text("Tool results: calculator: 42")
        if view == "live":
            await shot(page, "tool-steps")
            await page.reload()
            answer = answers(page).last


async def test_errors_are_shown_in_plain_words(page: Page, dev: LiveServer) -> None:
    answer = await send(page, "Fail midway", {"text": "one two three four five", "fail_after": 2})
    await expect(answer).to_have_attribute("data-status", "error")
    await expect(page.locator('[role="alert"]')).to_contain_text("failed")
    await expect(answer).to_have_text("one two")
    await set_options(page, {"chunks": "many"})  # refused before the model: nothing stored, prompt kept
    await message_box(page).fill("Bad options")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator('[role="alert"]')).to_contain_text("options.chunks")
    await expect(message_box(page)).to_have_value("Bad options")
    await expect(page.get_by_role("button", name="Send")).to_be_enabled()
    await page.goto(f"{dev.http_url}/?session=00000000-0000-0000-0000-000000000000")
    await expect(page.locator('[role="alert"]')).to_contain_text("does not exist")
    await expect(message_box(page)).to_be_editable()


XSS = (
    "<img src=x onerror=\"window.__xss='img'\">\n\n"
    "<script>window.__xss='script'</script>\n\n"
    "[a link](javascript:window.__xss='link')\n\n"
    "[mixed case](JaVaScRiPt:window.__xss='case')\n\n"
    "![picture](javascript:window.__xss='image')\n\n"
    "[data](data:text/html,<script>window.__xss='data'</script>)\n\n"
    "<a href=\"javascript:window.__xss='anchor'\">raw anchor</a>\n\n"
    "<svg onload=\"window.__xss='svg'\"></svg>\n\n"
    "[fine](https://example.com/page)"
)


async def test_model_output_cannot_run_script(page: Page) -> None:
    answer = await send(page, "<b onmouseover=\"window.__xss='prompt'\">hi</b>", {"text": XSS, "chunks": 97})
    await expect(answer).to_have_attribute("data-status", "completed")
    for view in ("live", "stored"):
        for link in await answer.locator("a:not([href])").all():
            await link.click()  # a javascript: URL, had it been kept, would run now
        await questions(page).last.hover()
        assert await page.evaluate("() => window.__xss") is None
        log = page.locator('[role="log"]')
        markup = "script, svg, iframe, object, [onerror], [onload], [onmouseover]"
        assert await log.locator(markup).count() == 0
        hrefs = await log.locator("[href], [src]").evaluate_all(
            "(nodes) => nodes.map((n) => n.getAttribute('href') ?? n.getAttribute('src'))"
        )
        assert hrefs == ["https://example.com/page"], hrefs
        await expect(answer).to_contain_text("<script>")  # shown as the text it is
        if view == "live":
            await page.reload()
            answer = answers(page).last
    await no_script_errors(page)


# -- cost, layout -------------------------------------------------------------------------------------

LONG_MARKDOWN = (
    "## Part\n\nSome **bold** text, `code`, a [link](https://example.com) and *emphasis*.\n\n"
    "- one\n- two with `x = 1`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nprint('hi')\n```\n\n"
)


async def test_a_20000_delta_answer_costs_as_much_per_delta_at_the_end(
    browser: Browser, dev: LiveServer
) -> None:
    page = await (await browser.new_context()).new_page()
    await page.add_init_script("window.__parleyRenderTimes = []")
    await page.goto(dev.http_url + "/")
    started = time.monotonic()
    answer = await send(page, "A long one", {"text": LONG_MARKDOWN, "chunks": 20_000})
    await expect(answer).to_have_attribute("data-status", "completed", timeout=60_000)
    elapsed = time.monotonic() - started
    times: list[float] = await page.evaluate("() => window.__parleyRenderTimes.slice(0, 20000)")
    assert len(times) == 20_000
    first, last = sum(times[:1000]), sum(times[-1000:])
    assert last <= 2 * first, f"the last thousand deltas took {last:.1f} ms, the first {first:.1f} ms"
    assert await answer.locator("table").count() > 10 and await answer.locator("pre").count() > 10
    assert elapsed < 45, f"20,000 deltas took {elapsed:.1f} s to show"
    print(f"20,000 deltas shown in {elapsed:.1f} s; first 1000: {first:.1f} ms, last 1000: {last:.1f} ms")


async def test_phone_width_and_dark_mode(browser: Browser, dev: LiveServer) -> None:
    phone = {
        "viewport": {"width": 390, "height": 780},
        "color_scheme": "dark",
        "has_touch": True,
        "reduced_motion": "reduce",  # the drawer is where it goes at once (also for the screenshot)
    }
    page = await open_page(browser, dev.http_url + "/", **phone)
    box = message_box(page)
    await expect(box).to_be_visible()
    assert (await box.bounding_box() or {"width": 0})["width"] > 200
    answer = await send(page, "Hello from a phone")
    await expect(answer).to_have_attribute("data-status", "completed")
    await shot(page, "phone-dark-chat")
    nav = page.locator('nav[aria-label="Sessions"]')
    await expect(nav).not_to_be_in_viewport()
    await page.get_by_role("button", name="Show sessions").click()
    await expect(nav).to_be_in_viewport()
    await shot(page, "phone-dark")
    await nav.get_by_role("link", name="Hello from a phone").click()
    await expect(nav).not_to_be_in_viewport()
    light = await open_page(browser, dev.http_url + "/", color_scheme="light")
    background = "() => getComputedStyle(document.body).backgroundColor"
    assert await page.evaluate(background) != await light.evaluate(background)
    no_overflow = "() => document.documentElement.scrollWidth <= window.innerWidth"
    assert await page.evaluate(no_overflow), "the page scrolls sideways at phone width"
