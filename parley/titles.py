"""Model-written session titles (``PARLEY_AUTO_TITLE``): asked for after a new session's first answer.

The request runs in the background, owned by the supervisor: the turn's events never wait for it, and a
failure only leaves the title taken from the first prompt. A title the user changed meanwhile is kept.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

from parley.providers.base import ChatMessage, ProviderRequest, TextDelta
from parley.providers.registry import Resolved
from parley.store.repository import TurnRecord, title_from

if TYPE_CHECKING:
    from parley.services import TurnServices
    from parley.store.history import History

log = logging.getLogger("parley.titles")

TITLE_TIMEOUT_S = 15.0
TITLE_WORDS = 6
EXCERPT_CHARS = 2000
MAX_REPLY_CHARS = 300
INSTRUCTION = (
    "You name chat conversations. Reply with a title of at most six words for the conversation below: "
    "no quotes, no trailing punctuation, nothing else."
)


def schedule_title(services: TurnServices, resolved: Resolved, record: TurnRecord, answer: str) -> None:
    """Start the background title request, if the setting is on and the server is still taking work."""
    supervisor = services.supervisor
    if not services.settings.auto_title or supervisor is None or not supervisor.accepting:
        return
    job = write_title(services.store.history, resolved, record, answer)
    supervisor.spawn(job, name=f"parley-title-{record.session_id}")


async def write_title(history: History, resolved: Resolved, record: TurnRecord, answer: str) -> None:
    """Ask for a title and store it, unless the session was renamed meanwhile. Never raises."""
    try:
        async with asyncio.timeout(TITLE_TIMEOUT_S):
            title = await model_title(resolved, record.prompt, answer)
        if title:
            await history.set_title_if(record.session_id, expected=title_from(record.prompt), title=title)
    except Exception:
        log.warning("no model-written title for session %s", record.session_id, exc_info=True)


async def model_title(resolved: Resolved, prompt: str, answer: str) -> str | None:
    """A short title from the model; the offline demo model derives one from the prompt instead."""
    if resolved.provider.name == "demo":
        return demo_title(prompt)
    conversation = f"User: {prompt[:EXCERPT_CHARS]}\n\nAssistant: {answer[:EXCERPT_CHARS]}"
    request = ProviderRequest(
        resolved.upstream_model,
        [ChatMessage("system", INSTRUCTION), ChatMessage("user", conversation)],
        max_tokens=32,
    )
    reply: list[str] = []
    stream = resolved.provider.stream(request)
    try:
        async for event in stream:
            if isinstance(event, TextDelta):
                reply.append(event.text)
                if sum(map(len, reply)) > MAX_REPLY_CHARS:
                    break
    finally:
        await stream.aclose()
    return clean_title("".join(reply))


def demo_title(prompt: str) -> str | None:
    """Deterministic: the prompt's first six words, first letter capitalised."""
    return clean_title(" ".join(prompt.split()[:TITLE_WORDS]))


def clean_title(reply: str) -> str | None:
    """The first non-empty line, without quotes, a "Title:" label or trailing punctuation; None if empty."""
    line = next((ln for ln in reply.splitlines() if ln.strip()), "")
    line = re.sub(r"^\s*(title\s*:\s*)", "", line, flags=re.IGNORECASE)
    line = line.strip().strip("\"'`*#“”‘’«»").strip().rstrip(".!?,;:").strip()
    if not line:
        return None
    return title_from(line[0].upper() + line[1:])
