#!/usr/bin/env python3
"""Manual check of real providers: one short turn per configured provider against a live Parley.

    JWT_TOKEN=$(.venv/bin/parley token --customer-id 1) .venv/bin/python tests/manual/test_providers_manual.py

Env: BACKEND_WS_URL (default ws://localhost:8000/chat/ws), EVENT_TIMEOUT (seconds, default 60),
PROVIDER_MODELS (e.g. "ollama=ollama/llama3.2,groq=llama-3.1-8b-instant") for endpoints without a
default model. The server's configuration decides what runs: it is read from GET /api/v1/models.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-mini"}
PROMPT = "Reply with one short sentence: which model are you?"


def http_base(ws_url: str) -> str:
    scheme, rest = ws_url.split("://", 1)
    host = rest.split("/", 1)[0]
    return f"{'https' if scheme == 'wss' else 'http'}://{host}"


def fetch_providers(ws_url: str, token: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{http_base(ws_url)}/api/v1/models", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: dict[str, Any] = json.load(response)
    providers: list[dict[str, Any]] = body["providers"]
    return providers


def chosen_models() -> dict[str, str]:
    models = dict(DEFAULT_MODELS)
    for pair in filter(None, os.environ.get("PROVIDER_MODELS", "").split(",")):
        name, _, model = pair.partition("=")
        models[name.strip()] = model.strip()
    return models


async def one_turn(ws: ClientConnection, model: str, timeout: float) -> dict[str, Any]:
    """Send one request; return what the turn showed: events, text, reasoning, usage, status, error."""
    request_id = uuid.uuid4().hex
    frame = {
        "request_id": request_id,
        "user_input": {"prompt": PROMPT, "session_id": ""},
        "user_settings": {"text": {"model": model, "max_tokens": 200}},
    }
    started = time.monotonic()
    await ws.send(json.dumps(frame))
    seen: dict[str, Any] = {"kinds": [], "text": "", "reasoning": "", "first_text_s": None}
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if event.get("request_id") != request_id:
            continue
        kind = event["type"]
        seen["kinds"].append(kind)
        if kind == "working":
            seen["provider"] = event["content"]["provider"]
        elif kind == "text":
            seen["text"] += event["content"]
            seen["first_text_s"] = seen["first_text_s"] or time.monotonic() - started
        elif kind == "reasoning":
            seen["reasoning"] += event["content"]
        elif kind == "error":
            seen["error"] = f"{event['code']}: {event['content']}"
        elif kind == "dbOperationExecuted":
            seen["usage"] = json.loads(event["content"])["usage"]
        elif kind == "fullProcessComplete":
            seen["status"] = event["status"]
            seen["total_s"] = time.monotonic() - started
            return seen


def report(name: str, model: str, seen: dict[str, Any]) -> bool:
    ok = seen.get("status") == "completed" and bool(seen["text"])
    print(f"\n{'✅' if ok else '❌'} {name} — model {model} (answered by {seen.get('provider')})")
    print(
        f"   events: {len(seen['kinds'])} ({seen['kinds'].count('text')} text, "
        f"{seen['kinds'].count('reasoning')} reasoning), status: {seen.get('status')}"
    )
    if seen.get("first_text_s") is not None:
        print(f"   first text after {seen['first_text_s']:.2f}s, done after {seen['total_s']:.2f}s")
    print(f"   usage: {seen.get('usage')}")
    if seen["reasoning"]:
        print(f"   reasoning: {seen['reasoning'][:200]!r}")
    print(f"   answer: {seen['text'][:300]!r}")
    if "error" in seen:
        print(f"   error: {seen['error']}")
    return ok


async def main() -> int:
    token = os.environ.get("JWT_TOKEN")
    url = os.environ.get("BACKEND_WS_URL", "ws://localhost:8000/chat/ws")
    timeout = float(os.environ.get("EVENT_TIMEOUT", "60"))
    if not token:
        print("❌ JWT_TOKEN is not set. Get one with: .venv/bin/parley token [--dev] --customer-id 1")
        return 1
    try:
        providers = fetch_providers(url, token)
    except (urllib.error.URLError, OSError) as exc:
        print(
            f"❌ Could not read {http_base(url)}/api/v1/models: {exc}\n→ Backend not running or token refused"
        )
        return 1
    real = [p for p in providers if p["kind"] != "demo"]
    runnable = [p for p in real if p["configured"]]
    for p in real:
        if not p["configured"]:
            print(f"⚪ {p['provider']}: not configured — set {p['key_env']} in the server's environment")
    if not runnable:
        print("\nNo real provider is configured on this server; set the keys above and restart it.")
        return 2
    models = chosen_models()
    results = []
    async with connect(f"{url}{'&' if '?' in url else '?'}token={token}&events=camel") as ws:
        json.loads(await asyncio.wait_for(ws.recv(), timeout))  # websocketReady
        for p in runnable:
            model = models.get(p["provider"])
            if model is None:
                print(f"⚪ {p['provider']}: no model to try — set PROVIDER_MODELS={p['provider']}=<model>")
                continue
            try:
                results.append(report(p["provider"], model, await one_turn(ws, model, timeout)))
            except TimeoutError:
                print(f"⏱️  {p['provider']}: timeout waiting for events")
                results.append(False)
    print(f"\n{sum(results)} of {len(results)} provider turns completed.")
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
