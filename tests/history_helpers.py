"""Helpers for the history tests: fresh customers, completed turns, edit and regenerate frames."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from tests.conftest import LiveServer
from tests.invariants import Frame, TurnSummary
from tests.wsclient import ChatClient, chat_frame

POLL_TIMEOUT_S = 10.0
POLL_STEP_S = 0.02

T = TypeVar("T")


def fresh_customer() -> str:
    """A customer no other test uses: listings and searches on the shared PostgreSQL see only its data."""
    return f"hist-{uuid.uuid4().hex[:16]}"


async def completed(client: ChatClient, prompt: Any = "Hello", **kwargs: Any) -> TurnSummary:
    """Run a turn, check every invariant, and require it to complete."""
    summary = await client.turn(await client.chat(prompt, **kwargs))
    assert summary.status == "completed", summary.kinds
    assert summary.session_id and summary.user_message_id and summary.ai_message_id
    return summary


def branch_frame(
    session_id: str,
    prompt: Any = None,
    *,
    edit_of: str | None = None,
    regenerate: str | None = None,
    **kw: Any,
) -> Frame:
    """A chat request naming ``edit_of`` or ``regenerate``; ``prompt=None`` leaves the prompt out entirely."""
    frame = chat_frame("" if prompt is None else prompt, session_id=session_id, **kw)
    if prompt is None:
        del frame["user_input"]["prompt"]
    if edit_of is not None:
        frame["user_input"]["edit_of"] = edit_of
    if regenerate is not None:
        frame["user_input"]["regenerate"] = regenerate
    return frame


async def send_turn(client: ChatClient, frame: Frame) -> TurnSummary:
    await client.send(frame)
    return await client.turn(str(frame["request_id"]))


async def get_json(http: httpx.AsyncClient, path: str, status: int = 200, **kwargs: Any) -> Any:
    response = await http.get(path, **kwargs)
    assert response.status_code == status, response.text
    return response.json()


async def session_json(server: LiveServer, customer: str, session_id: str) -> dict[str, Any]:
    async with server.http(customer) as http:
        body: dict[str, Any] = await get_json(http, f"/api/v1/sessions/{session_id}")
    return body


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = POLL_TIMEOUT_S) -> T:
    """Poll ``probe`` until it returns something other than None (bounded)."""
    async with asyncio.timeout(timeout):
        while True:
            if (value := await probe()) is not None:
                return value
            await asyncio.sleep(POLL_STEP_S)
