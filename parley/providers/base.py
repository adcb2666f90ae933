"""The provider interface, its stream events, and the registry that routes a model name to a provider."""

from __future__ import annotations

import fnmatch
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from parley.errors import ValidationFailed

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

    name: ClassVar[str]
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
    model: str
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
            return Resolved(provider, model)
        if self._dev and "demo" in self._providers:
            self._announce_stand_in(model, route)
            return Resolved(self._providers["demo"], model, stand_in_for=route.provider)
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
