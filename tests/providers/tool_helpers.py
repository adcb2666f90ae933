"""What the provider tool tests share: tool specs, a registry, event helpers and a reference tool loop.

``run_tool_loop`` is how a turn drives a multi-step exchange with the provider events: stream a step,
append ``StepEnd.message``, run its calls, append one ``ChatMessage.tool_result`` per result, repeat until a
step makes no calls (the last allowed step is asked for text with ``tool_choice="none"``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from parley.providers.base import (
    ChatMessage,
    Provider,
    ProviderEvent,
    ProviderRequest,
    StepEnd,
    TextDelta,
    ToolCallReady,
    ToolCallStarted,
    Usage,
)
from parley.tools.base import SearchHitLike, ToolContext
from parley.tools.builtin import CALCULATOR, CURRENT_TIME, builtin_tools
from parley.tools.registry import ToolRegistry

TOOLS = (CALCULATOR, CURRENT_TIME)


async def _no_search(customer_id: str, query: str, limit: int, offset: int) -> Sequence[SearchHitLike]:
    return []


CONTEXT = ToolContext(customer_id="c-1", search=_no_search)
REGISTRY = ToolRegistry(builtin_tools())


async def collect(provider: Provider, request: ProviderRequest) -> list[ProviderEvent]:
    """Every event of one streamed step (bounded: a hung fake fails the test)."""
    async with asyncio.timeout(10):
        return [event async for event in provider.stream(request)]


async def drain(stream: AsyncIterator[ProviderEvent], into: list[ProviderEvent]) -> None:
    """Read ``stream`` into ``into`` as it comes, so a test can look at what arrived before a cancel."""
    async with asyncio.timeout(10):
        async for event in stream:
            into.append(event)


def kinds(events: Sequence[ProviderEvent]) -> list[str]:
    """Event class names, usage left out: the order tests care about."""
    return [type(e).__name__ for e in events if not isinstance(e, Usage)]


def text_of(events: Sequence[ProviderEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def started(events: Sequence[ProviderEvent]) -> list[ToolCallStarted]:
    return [e for e in events if isinstance(e, ToolCallStarted)]


def ready(events: Sequence[ProviderEvent]) -> list[ToolCallReady]:
    return [e for e in events if isinstance(e, ToolCallReady)]


def step_end(events: Sequence[ProviderEvent]) -> StepEnd:
    """The stream's ``StepEnd``, which must be its last event."""
    assert isinstance(events[-1], StepEnd), f"the last event is {events[-1]!r}, not StepEnd"
    assert sum(isinstance(e, StepEnd) for e in events) == 1
    return events[-1]


@dataclass
class LoopRun:
    """What a tool loop did: every step's events, and the conversation it ended with."""

    steps: list[list[ProviderEvent]] = field(default_factory=list)
    messages: list[ChatMessage] = field(default_factory=list)

    @property
    def last(self) -> StepEnd:
        return step_end(self.steps[-1])


async def run_tool_loop(provider: Provider, request: ProviderRequest, max_steps: int = 5) -> LoopRun:
    """A reference agentic turn: at most ``max_steps`` model calls, the last one told to answer in text."""
    run = LoopRun(messages=list(request.messages))
    async with asyncio.timeout(20):
        for step in range(max_steps):
            choice = "none" if step == max_steps - 1 else request.tool_choice
            events = [
                e async for e in provider.stream(replace(request, messages=run.messages, tool_choice=choice))
            ]
            run.steps.append(events)
            end = step_end(events)
            run.messages.append(end.message)
            if not end.tool_calls:
                break
            results = await REGISTRY.run_all(end.tool_calls, CONTEXT)
            run.messages += [ChatMessage.tool_result(result) for result in results]
    return run
