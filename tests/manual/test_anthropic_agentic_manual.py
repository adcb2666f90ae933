#!/usr/bin/env python3
"""Manual check of an agentic turn against a live Parley: a question that needs tools, each step printed
as it streams (text, tool calls with their input, tool results), then the stored exchange read back.

    export JWT_TOKEN=$(.venv/bin/parley token --customer-id 1)
    .venv/bin/python tests/manual/test_anthropic_agentic_manual.py

Env: BACKEND_WS_URL (default ws://localhost:8000/chat/ws), CHAT_MODEL (default claude-mini; any model
the server routes, e.g. gpt-4o-mini, or demo with DEMO_SCRIPT=1 for an offline run), TOOLS (comma
separated, default calculator,current_time), PROMPT, MAX_STEPS, EVENT_TIMEOUT (seconds, default 90).
Exits 0 when the turn completed with at least one tool call, every call answered, and the exchange stored.
Stand-alone: only the standard library and ``websockets``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

DEFAULT_PROMPT = (
    "Use your tools, not your memory: what is 48271 * 9631 - 7 ** 5, and what is the date and "
    "time right now in Tokyo and in New York? Answer in two short sentences."
)
DEMO_SCRIPT = {  # what the offline demo model calls when DEMO_SCRIPT=1
    "tool_steps": [
        [{"name": "calculator", "arguments": {"expression": "48271 * 9631 - 7 ** 5"}}],
        [
            {"name": "current_time", "arguments": {"timezone": "Asia/Tokyo"}},
            {"name": "current_time", "arguments": {"timezone": "America/New_York"}},
        ],
    ],
    "tool_text": "Let me check. ",
}


def http_base(ws_url: str) -> str:
    scheme, rest = ws_url.split("://", 1)
    host = rest.split("/", 1)[0]
    return f"{'https' if scheme == 'wss' else 'http'}://{host}"


def get_json(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Printer:
    """Prints a turn as it streams: text inline, each tool event on its own indented lines."""

    def __init__(self) -> None:
        self.in_text = False
        self.step = 1
        self.started = time.monotonic()

    def stamp(self) -> str:
        return f"[{time.monotonic() - self.started:6.2f}s]"

    def line(self, text: str) -> None:
        if self.in_text:
            print()
            self.in_text = False
        print(f"{self.stamp()} {text}", flush=True)

    def text(self, delta: str) -> None:
        if not self.in_text:
            print(f"{self.stamp()} 💬 ", end="")
            self.in_text = True
        print(delta, end="", flush=True)


async def run_turn(url: str, token: str, frame: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send the request; print and collect its events until ``fullProcessComplete``."""
    out = Printer()
    seen: dict[str, Any] = {"kinds": [], "uses": {}, "results": {}, "text": "", "status": None}
    async with connect(f"{url}{'&' if '?' in url else '?'}token={token}&events=camel", max_size=None) as ws:
        ready = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if ready.get("type") != "websocketReady":
            raise RuntimeError(f"expected websocketReady first, got: {short(ready)}")
        await ws.send(json.dumps(frame))
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            if event.get("request_id") != frame["request_id"]:
                continue
            kind = event["type"]
            seen["kinds"].append(kind)
            content = event.get("content")
            if kind == "working":
                out.line(f"⚙️  working — model {content['model']}, provider {content['provider']}")
            elif kind == "text":
                seen["text"] += content
                out.text(content)
            elif kind == "reasoning":
                out.line(f"🤔 {short(content, 200)}")
            elif kind == "toolUse":
                seen["uses"][content["call_id"]] = content
                call = f"{content['name']}({short(content['input'], 200)})"
                out.line(f"🔧 step {out.step}: {call}  [{content['call_id']}]")
            elif kind == "toolResult":
                seen["results"][content["call_id"]] = content
                mark = "❌" if content["is_error"] else "✅"
                out.line(f"   {mark} {short(content['output'])}")
                if len(seen["results"]) == len(seen["uses"]):
                    out.step += 1
            elif kind == "cancelled":
                out.line("🛑 cancelled")
            elif kind == "error":
                seen["error"] = f"{event['stage']}/{event['code']}: {content}"
                out.line(f"❌ error {seen['error']}")
            elif kind == "dbOperationExecuted":
                seen["db"] = json.loads(content)
                out.line(f"💾 stored: session {seen['db']['session_id']}, usage {seen['db']['usage']}")
            elif kind == "fullProcessComplete":
                seen["status"] = event["status"]
                out.line(f"🏁 fullProcessComplete (status: {event['status']})")
                return seen


def check(seen: dict[str, Any], stored: dict[str, Any] | None) -> list[str]:
    """What went wrong, if anything."""
    problems = []
    if seen["status"] != "completed":
        problems.append(
            f"the turn ended with status {seen['status']} ({seen.get('error', 'no error event')})"
        )
    if not seen["uses"]:
        problems.append("the model called no tool (try a stronger model, or check TOOLS)")
    unanswered = set(seen["uses"]) - set(seen["results"])
    if unanswered:
        problems.append(f"tool calls without a toolResult: {sorted(unanswered)}")
    kinds = seen["kinds"]
    if "dbOperationExecuted" not in kinds or kinds.index("dbOperationExecuted") > kinds.index(
        "fullProcessComplete"
    ):
        problems.append("dbOperationExecuted did not come before fullProcessComplete")
    if stored is not None:
        calls = [call["id"] for step in stored.get("tool_steps") or [] for call in step["calls"]]
        if sorted(calls) != sorted(seen["uses"]):
            problems.append(f"the stored steps hold calls {calls}, the stream showed {sorted(seen['uses'])}")
        if stored.get("content") != seen["text"]:
            problems.append("the stored answer differs from the text streamed")
    return problems


async def main() -> int:
    token = os.environ.get("JWT_TOKEN")
    url = os.environ.get("BACKEND_WS_URL", "ws://localhost:8000/chat/ws")
    model = os.environ.get("CHAT_MODEL", "claude-mini")
    tools = [t.strip() for t in os.environ.get("TOOLS", "calculator,current_time").split(",") if t.strip()]
    timeout = float(os.environ.get("EVENT_TIMEOUT", "90"))
    if not token:
        print("❌ JWT_TOKEN is not set. Get one with: .venv/bin/parley token [--dev] --customer-id 1")
        return 1
    try:
        offered = [t["name"] for t in get_json(f"{http_base(url)}/api/v1/tools", token)["tools"]]
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        print(
            f"❌ Could not read {http_base(url)}/api/v1/tools: {exc}\n→ Backend not running, or token refused"
        )
        return 1
    missing = [t for t in tools if t not in offered]
    if missing:
        print(f"❌ The server does not offer {missing}; it offers: {', '.join(offered)}")
        return 1
    text_settings: dict[str, Any] = {"model": model, "tools": tools, "max_tokens": 1024}
    if os.environ.get("MAX_STEPS"):
        text_settings["max_steps"] = int(os.environ["MAX_STEPS"])
    if os.environ.get("DEMO_SCRIPT") == "1":
        text_settings["options"] = DEMO_SCRIPT
    prompt = os.environ.get("PROMPT", DEFAULT_PROMPT)
    frame = {
        "request_id": uuid.uuid4().hex,
        "user_input": {"prompt": prompt, "session_id": ""},
        "user_settings": {"text": text_settings},
    }
    print(f"🔗 {url} — model {model}, tools {tools}")
    print(textwrap.fill(f"❓ {prompt}", 100), "\n", flush=True)
    try:
        seen = await run_turn(url, token, frame, timeout)
    except TimeoutError:
        print(f"\n⏱️  Timeout: no event for {timeout:g}s (EVENT_TIMEOUT)")
        return 1
    except (OSError, ConnectionClosed, RuntimeError) as exc:
        print(f"\n❌ Connection failed: {exc}")
        return 1

    stored = None
    if seen.get("db"):
        session = get_json(f"{http_base(url)}/api/v1/sessions/{seen['db']['session_id']}", token)
        stored = next((m for m in session["messages"] if m["id"] == seen["db"]["ai_message_id"]), None)
        steps = (stored or {}).get("tool_steps") or []
        print(f"\n📚 REST shows {len(steps)} stored tool step(s):")
        for n, step in enumerate(steps, 1):
            for call, result in zip(step["calls"], step["results"], strict=False):
                print(f"   {n}. {call['name']}({short(call['input'], 120)}) → {short(result['output'], 120)}")
    problems = check(seen, stored)
    print("\n" + "=" * 60)
    if problems:
        print("❌ AGENTIC TURN FAILED")
        for problem in problems:
            print(f"   - {problem}")
    else:
        print(f"✅ AGENTIC TURN PASSED: {len(seen['uses'])} tool call(s), every one answered and stored")
    print("=" * 60)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
