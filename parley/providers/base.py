"""The provider interface, its stream events, and the registry that routes a model name to a provider."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from parley.errors import ProviderFailed

log = logging.getLogger("parley.providers")


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class ProviderRequest:
    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts known so far; a later Usage replaces the fields it sets."""

    input_tokens: int | None = None
    output_tokens: int | None = None


ProviderEvent = TextDelta | ReasoningDelta | Usage


class Provider(ABC):
    """A model backend: one streaming method plus capability flags."""

    name: str = "provider"  # set per instance for named endpoints (e.g. "ollama")
    can_stream: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = False
    needs_key: ClassVar[bool] = True

    def check_options(self, options: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Raise ``ValidationFailed`` for options this provider cannot take."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections."""

    @abstractmethod
    def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        """Stream the answer. Raise ``ProviderFailed`` on failure; closing the iterator closes upstream."""


async def stream_with_retries(
    provider: Provider, request: ProviderRequest, attempts: int = 3, backoff_s: float = 0.25
) -> AsyncGenerator[ProviderEvent, None]:
    """``provider.stream``, retried with exponential backoff on transient failures before any output.

    Once text or reasoning has been sent, a failure is final: the client has seen it, so a retry would
    contradict what is already on screen.
    """
    for attempt in range(attempts):
        started = False
        stream = provider.stream(request)
        try:
            async for event in stream:
                started = started or isinstance(event, (TextDelta, ReasoningDelta))
                yield event
            return
        except ProviderFailed as exc:
            if started or not exc.retryable or attempt == attempts - 1:
                raise
            log.warning(
                "%s failed before any output (%s); retry %d of %d",
                provider.name,
                exc.code,
                attempt + 1,
                attempts - 1,
            )
        finally:
            await stream.aclose()
        await asyncio.sleep(backoff_s * 2**attempt)
