"""One model step streamed to the client: the one place provider events become a turn's events.

A plain turn is one step; an agentic turn (parley/agent.py) takes one per model call. Either way each event
goes through ``TurnEmitter`` into the turn's log, which numbers it and hands it to the connections that
follow the turn (parley/streams.py): the log sits at this seam.

This is the hot path of every delta: no database, no logging, no awaits but the provider's and a wait for
a client that cannot keep up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from parley.answer import Answer, TextSender
from parley.errors import ParleyError, ProviderFailed
from parley.protocol import TurnEmitter
from parley.providers.base import (
    Provider,
    ProviderRequest,
    ReasoningDelta,
    StepEnd,
    TextDelta,
    ToolCallReady,
    Usage,
    stream_with_retries,
)
from parley.services import Channel
from parley.tools import ToolCall

log = logging.getLogger("parley.turn")


@dataclass
class Streamer:
    """What every step of one turn streams with: the model, its retry policy, and where the answer goes."""

    provider: Provider
    events: TurnEmitter
    channel: Channel
    answer: Answer
    text: TextSender
    attempts: int = 3
    backoff_s: float = 0.25

    async def step(
        self, request: ProviderRequest, on_call: Callable[[ToolCall], None] | None = None
    ) -> StepEnd | None:
        """Stream one model call: text and reasoning out as they come, usage counted, each tool call handed
        to ``on_call`` once the model has written it whole. Returns the step's ``StepEnd`` (requests with
        tools), else None. A cancel that cut the answer ends the step (also when the provider swallowed
        the cancellation); a provider failure raises ``ProviderFailed``."""
        events, channel, text, answer = self.events, self.channel, self.text, self.answer
        answer.begin_step()
        end: StepEnd | None = None
        stream = stream_with_retries(self.provider, request, self.attempts, self.backoff_s)
        try:
            async for item in stream:
                if type(item) is TextDelta:
                    if item.text:
                        text.add(item.text)
                elif isinstance(item, ReasoningDelta):
                    if item.text:
                        text.reasoning(item.text)
                elif isinstance(item, Usage):
                    answer.add_usage(item)
                elif isinstance(item, ToolCallReady):
                    if on_call is not None:
                        text.flush()  # the text before a call goes out before its toolUse
                        on_call(item.call)
                elif isinstance(item, StepEnd):
                    end = item
                if events.cut:
                    break
                if channel.congested:
                    await channel.wait_ready()
        except ParleyError:
            raise
        except Exception as exc:  # an unmapped provider failure: log it all, tell the client little
            log.exception("turn %s: provider %s failed", events.request_id, self.provider.name)
            raise ProviderFailed("The model provider failed.") from exc
        finally:
            text.flush()  # what arrived goes out before the turn's closing events, also on cancel
            await stream.aclose()
        return end
