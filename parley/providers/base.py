"""The provider interface, its stream events, and the registry that routes a model name to a provider."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from parley.errors import ProviderFailed, ValidationFailed

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

    @abstractmethod
    def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        """Stream the answer. Raise ``ProviderFailed`` on failure; closing the iterator closes upstream."""


@dataclass(frozen=True)
class Route:
    """Model names matching ``pattern`` are served by ``provider``, whose key lives in ``key_env``."""

    pattern: str
    provider: str
    key_env: str | None = None


BUILTIN_ROUTES: tuple[Route, ...] = (
    Route("demo", "demo"),
    Route("gpt-*", "openai", "OPENAI_API_KEY"),
    Route("o1*", "openai", "OPENAI_API_KEY"),
    Route("o3*", "openai", "OPENAI_API_KEY"),
    Route("o4*", "openai", "OPENAI_API_KEY"),
    Route("chatgpt-*", "openai", "OPENAI_API_KEY"),
    Route("claude-*", "anthropic", "ANTHROPIC_API_KEY"),
)


@dataclass(frozen=True)
class Resolved:
    provider: Provider
    model: str  # as the client asked for it
    upstream_model: str  # as the provider knows it
    stand_in_for: str | None = None  # the unconfigured provider `demo` stands in for (dev mode)


class ModelRegistry:
    """Routes a model name to a configured provider."""

    def __init__(
        self, providers: Mapping[str, Provider], routes: tuple[Route, ...] = BUILTIN_ROUTES, dev: bool = False
    ) -> None:
        self._providers = dict(providers)
        self._routes = routes
        self._dev = dev
        self._announced: set[str] = set()

    def resolve(self, model: str) -> Resolved:
        route = next((r for r in self._routes if fnmatch.fnmatchcase(model, r.pattern)), None)
        if route is None:
            raise ValidationFailed(f"Unknown model {model!r}.", code="unknown_model")
        provider = self._providers.get(route.provider)
        if provider is not None:
            return Resolved(provider, model, model)
        if self._dev and "demo" in self._providers:
            self._announce_stand_in(model, route)
            return Resolved(self._providers["demo"], model, model, stand_in_for=route.provider)
        hint = f" (set {route.key_env})" if route.key_env else ""
        raise ValidationFailed(
            f"Model {model!r} needs the {route.provider} provider, which is not configured{hint}.",
            code="provider_not_configured",
        )

    def _announce_stand_in(self, model: str, route: Route) -> None:
        if model not in self._announced:
            self._announced.add(model)
            log.warning(
                "dev mode: model %r would use the %s provider, which is not configured; "
                "the offline demo model answers instead",
                model,
                route.provider,
            )


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
