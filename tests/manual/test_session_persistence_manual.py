#!/usr/bin/env python3
"""Manual check, against a live server, that two messages on one WebSocket land in the same session.

Run: JWT_TOKEN=... .venv/bin/python tests/manual/test_session_persistence_manual.py  (tests/manual/README.md)
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

DEFAULT_URL = "ws://localhost:8000/chat/ws"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_TIMEOUT = 30.0
LATE_EVENT_GRACE = 2.0  # seconds to wait for a dbOperationExecuted that comes after fullProcessComplete
MAX_TEXT_LINES = 10  # consecutive text events printed before the rest are collapsed into one line
RULE = "=" * 60
FIRST_PROMPT = "Hello! This is the first message of the session persistence test."
SECOND_PROMPT = "This is the second message of the session persistence test. Do you remember the first?"
TOKEN_HINT = "   → Get one with: .venv/bin/parley token --dev --customer-id 1  (`serve --dev` prints one)"


class Abort(Exception):
    """Ends the test with exit code 1; its lines are printed as they are."""

    def __init__(self, *lines: str) -> None:
        super().__init__(*lines)
        self.lines = lines


@dataclass(frozen=True)
class Config:
    url: str
    token: str
    model: str
    timeout: float


@dataclass
class TurnResult:
    session_id: str | None = None
    status: str | None = None
    errors: list[str] = field(default_factory=list)
    late_db_event: bool = False

    def describe_status(self) -> str:
        detail = f" ({'; '.join(self.errors)})" if self.errors else ""
        return f"{self.status}{detail}"


def load_config() -> Config:
    token = os.environ.get("JWT_TOKEN", "").strip()
    if not token:
        raise Abort(
            "❌ JWT_TOKEN is not set",
            TOKEN_HINT,
            "   → Then run: JWT_TOKEN=... .venv/bin/python tests/manual/test_session_persistence_manual.py",
        )
    raw_timeout = os.environ.get("EVENT_TIMEOUT") or str(DEFAULT_TIMEOUT)
    try:
        timeout = float(raw_timeout)
    except ValueError:
        timeout = 0.0
    if timeout <= 0:
        raise Abort(f"❌ EVENT_TIMEOUT must be a positive number of seconds, got {raw_timeout!r}")
    url = os.environ.get("BACKEND_WS_URL") or DEFAULT_URL
    return Config(url=url, token=token, model=os.environ.get("CHAT_MODEL") or DEFAULT_MODEL, timeout=timeout)


def authenticated_url(url: str, token: str) -> str:
    """Adds `token` (and `events=camel`, the dialect this script reads) to the URL's query."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("token", "events")]
    query = [*kept, ("token", token), ("events", "camel")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def connection_error(exc: Exception, config: Config) -> Abort:
    if isinstance(exc, InvalidStatus):
        code = exc.response.status_code
        if code in (401, 403):
            hint = "   → The server refused the JWT (expired, or signed with a different secret)"
            return Abort(f"❌ Connection failed: invalid status code {code}", hint, TOKEN_HINT)
        hint = f"   → The server answered HTTP {code} instead of upgrading; check BACKEND_WS_URL"
        return Abort(f"❌ Connection failed: invalid status code {code}", hint)
    reason = (str(exc) or type(exc).__name__).replace(config.token, "***")  # never print the token
    if isinstance(exc, TimeoutError):  # a subclass of OSError: test it first
        return Abort(f"❌ Connection failed: no handshake within {config.timeout:g}s", "   → Backend hung")
    if isinstance(exc, OSError):
        return Abort(f"❌ Connection failed: {reason}", f"   → Backend not running at {config.url}")
    return Abort(f"❌ Connection failed: {reason}", "   → Check BACKEND_WS_URL (a ws:// or wss:// URL)")


def closed_error(exc: ConnectionClosed) -> Abort:
    if exc.rcvd is None:
        detail = "connection dropped without a close frame"
    else:
        detail = f"close code {exc.rcvd.code}" + (f" ({exc.rcvd.reason})" if exc.rcvd.reason else "")
    return Abort(
        f"❌ Server closed the connection mid-test: {detail}",
        "   → The backend ended the WebSocket before the test finished; check its log",
    )


async def next_event(ws: ClientConnection, timeout: float) -> dict[str, Any]:
    try:
        raw = await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        raise Abort(
            "⏱️  Timeout waiting for events",
            f"   → Backend hung or request failed silently (nothing for {timeout:g}s; see EVENT_TIMEOUT)",
        ) from None
    except ConnectionClosed as exc:
        raise closed_error(exc) from None
    try:
        event = json.loads(raw)
    except json.JSONDecodeError:
        event = None
    if not isinstance(event, dict):
        raise Abort(f"❌ Server sent a frame that is not a JSON object: {raw[:200]!r}")
    return event


async def expect_ready(ws: ClientConnection, timeout: float) -> None:
    event = await next_event(ws, timeout)
    kind = event.get("type")
    if kind != "websocketReady":
        raise Abort(f"❌ Expected websocketReady as the first event, got: {kind or event}")
    print(f"📩 Received: {kind}")


def build_request(request_id: str, prompt: str, session_id: str, model: str) -> dict[str, Any]:
    return {
        "request_type": "text",
        "request_id": request_id,
        "user_input": {
            "prompt": [{"type": "text", "text": prompt}],
            "chat_history": [],
            "session_id": session_id,
        },
        "user_settings": {"text": {"model": model, "streaming": True}},
    }


def session_id_of(event: dict[str, Any]) -> str | None:
    """The top-level session_id of a dbOperationExecuted event, else the one in its JSON-string content."""
    if event.get("session_id"):
        return str(event["session_id"])
    content = event.get("content")
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except json.JSONDecodeError:
            return None
    if isinstance(content, dict) and content.get("session_id"):
        return str(content["session_id"])
    return None


def record(event: dict[str, Any], result: TurnResult) -> str:
    """Updates the turn's result from one of its events and returns the line describing it."""
    kind = str(event.get("type"))
    if kind == "dbOperationExecuted":
        result.session_id = session_id_of(event)
        return f"{kind} → session_id: {result.session_id or '(missing)'}"
    if kind == "error":
        message = f"{event.get('code')}: {event.get('content')}"
        result.errors.append(message)
        return f"{kind} → {message}"
    if kind == "fullProcessComplete":
        result.status = str(event.get("status"))
        return f"{kind} (status: {result.status})"
    return kind


async def catch_late_db_event(ws: ClientConnection, request_id: str, result: TurnResult) -> None:
    """Looks briefly for a dbOperationExecuted sent after fullProcessComplete (the regression tested for)."""
    try:
        while True:
            event = await next_event(ws, LATE_EVENT_GRACE)
            if event.get("request_id") == request_id and event.get("type") == "dbOperationExecuted":
                result.late_db_event = True
                print("   ⚠️  dbOperationExecuted arrived AFTER fullProcessComplete")
                return
    except Abort:
        return


async def collect_turn(ws: ClientConnection, request_id: str, timeout: float) -> TurnResult:
    result = TurnResult()
    count = text_run = 0
    while result.status is None:
        event = await next_event(ws, timeout)
        if event.get("request_id") != request_id:
            continue  # another turn's event, or a control event
        count += 1
        if event.get("type") == "text":
            text_run += 1
            if text_run <= MAX_TEXT_LINES:
                print(f"   {count}. text")
            continue
        if text_run > MAX_TEXT_LINES:
            print(f"   ... ({text_run - MAX_TEXT_LINES} more text events)")
        text_run = 0
        print(f"   {count}. {record(event, result)}")
    if result.session_id is None:
        await catch_late_db_event(ws, request_id, result)
    return result


async def run_turn(ws: ClientConnection, config: Config, prompt: str, session_id: str) -> TurnResult:
    request_id = str(uuid.uuid4())
    try:
        await ws.send(json.dumps(build_request(request_id, prompt, session_id, config.model)))
    except ConnectionClosed as exc:
        raise closed_error(exc) from None
    return await collect_turn(ws, request_id, config.timeout)


def first_session_id(first: TurnResult) -> str:
    if first.status != "completed":
        raise Abort(
            f"\n❌ ERROR: First message ended with status: {first.describe_status()}",
            "   → The server refused or failed the turn; check CHAT_MODEL (`demo` needs no provider key)",
        )
    if first.session_id is None:
        lines = ["\n❌ ERROR: Did not receive session_id from first message"]
        if first.late_db_event:
            lines.append("   → dbOperationExecuted came after fullProcessComplete (the ordering regression)")
        lines.append("   → Database persistence is failing or dbOperationExecuted not being sent")
        raise Abort(*lines)
    return first.session_id


def report(first_id: str, second: TurnResult) -> int:
    problems: list[str] = []
    if second.status != "completed":
        problems.append(f"   Second message ended with status: {second.describe_status()}")
    elif second.session_id is None:
        when = "after" if second.late_db_event else "before"
        problems.append(f"   Second message sent no dbOperationExecuted {when} fullProcessComplete")
    if second.session_id is not None and second.session_id != first_id:
        problems += ["   Messages landed in DIFFERENT sessions!", "   Session persistence is BROKEN."]
    print(f"\n{RULE}\n📋 TEST RESULTS\n{RULE}")
    print(f"First message session ID:  {first_id}")
    print(f"Second message session ID: {second.session_id or '(none)'}")
    print(f"\n{RULE}")
    if problems:
        print("❌ TEST FAILED", *problems, sep="\n")
    else:
        print("✅ TEST PASSED", "   Both messages landed in the same session!", sep="\n")
        print("   Session persistence is working correctly.")
    print(RULE)
    return 1 if problems else 0


async def run(config: Config) -> int:
    print(f"🔗 Connecting to: {config.url}")
    try:
        url = authenticated_url(config.url, config.token)
        ws = await connect(url, open_timeout=config.timeout, close_timeout=2)
    except (OSError, WebSocketException) as exc:
        raise connection_error(exc, config) from None
    async with ws:
        print("✅ WebSocket connected")
        await expect_ready(ws, config.timeout)
        print("\n📤 Sending first message...")
        print("📊 Collecting events for first message...")
        first_id = first_session_id(await run_turn(ws, config, FIRST_PROMPT, ""))
        print(f"\n✓ First message session ID: {first_id}")
        print("\n📤 Sending second message with same session ID...")
        print("📊 Collecting events for second message...")
        second = await run_turn(ws, config, SECOND_PROMPT, first_id)
    return report(first_id, second)


async def main() -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # show events as they arrive, even through a pipe
    try:
        return await run(load_config())
    except Abort as abort:
        print(*abort.lines, sep="\n")
        return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
