"""Model routing: which provider serves a model name, under which upstream id, with which key.

Built in: ``demo``; ``gpt-*``, ``o1*``, ``o3*``, ``o4*``, ``chatgpt-*`` → OpenAI; ``claude-*`` → Anthropic;
aliases such as ``claude-mini``. A TOML file (``PARLEY_MODELS_FILE``) adds named endpoints — any
OpenAI-compatible server — more patterns and aliases; see docs/providers.md.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parley.errors import ValidationFailed
from parley.providers.base import Provider

log = logging.getLogger("parley.providers")

Kind = Literal["openai", "anthropic", "demo"]


class EndpointConfig(BaseModel):
    """One provider endpoint, as written in the models file."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind = "openai"
    base_url: str | None = None
    base_url_env: str | None = None
    key_env: str = ""  # "" = no key needed (local servers)
    prefix: str | None = None  # "ollama/" → "ollama/<model>" is sent upstream as "<model>"
    models: list[str] = Field(default_factory=list)  # more name patterns served as named
    timeout_s: float = Field(default=120.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)  # sent with every request (e.g. OpenRouter's)


class ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    providers: dict[str, EndpointConfig] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)


BUILTIN = ModelsFile(
    providers={
        "demo": EndpointConfig(kind="demo", models=["demo"]),
        "openai": EndpointConfig(
            kind="openai",
            key_env="OPENAI_API_KEY",
            base_url_env="OPENAI_BASE_URL",
            models=["gpt-*", "o1*", "o3*", "o4*", "chatgpt-*"],
        ),
        "anthropic": EndpointConfig(
            kind="anthropic",
            key_env="ANTHROPIC_API_KEY",
            base_url_env="ANTHROPIC_BASE_URL",
            models=["claude-*"],
        ),
    },
    aliases={"claude-mini": "claude-haiku-5-5"},
)


def load_models_file(path: Path | None) -> ModelsFile:
    """The built-ins, with the file's providers and aliases laid over them (same name: the file wins)."""
    if path is None:
        return BUILTIN
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read the models file {path}: {exc}") from None
    try:
        given = ModelsFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ValueError(f"models file {path}: {problems}") from None
    for name, endpoint in given.providers.items():
        if (
            name not in BUILTIN.providers
            and endpoint.kind != "demo"
            and not (endpoint.base_url or endpoint.base_url_env)
        ):
            # Without one the SDK would send this endpoint's key to the vendor's own API.
            raise ValueError(f"models file {path}: providers.{name} needs base_url (or base_url_env)")
    # Endpoints new in the file come first, so their patterns win over the built-ins' (routes go in order).
    providers = {name: e for name, e in given.providers.items() if name not in BUILTIN.providers}
    for name, builtin in BUILTIN.providers.items():
        raw = data.get("providers", {}).get(name)
        providers[name] = builtin if raw is None else _merge(builtin, given.providers[name], raw)
    return ModelsFile(providers=providers, aliases={**BUILTIN.aliases, **given.aliases})


def _merge(builtin: EndpointConfig, given: EndpointConfig, raw: Mapping[str, Any]) -> EndpointConfig:
    """A file entry for a built-in provider changes only the fields it names."""
    return builtin.model_copy(update={key: getattr(given, key) for key in raw})


@dataclass(frozen=True)
class Endpoint:
    """A provider endpoint with its settings resolved from the environment."""

    name: str
    config: EndpointConfig
    api_key: str | None
    base_url: str | None

    @property
    def configured(self) -> bool:
        return not self.config.key_env or bool(self.api_key)


@dataclass(frozen=True)
class Resolved:
    provider: Provider
    model: str  # as the client asked for it
    upstream_model: str  # as the provider knows it
    stand_in_for: str | None = None  # the unconfigured provider `demo` stands in for (dev mode)


ProviderFactory = Callable[[Endpoint], Provider]


@dataclass
class ModelRegistry:
    """Routes a model name to a configured provider, building each provider once, on first use."""

    endpoints: dict[str, Endpoint]
    aliases: dict[str, str]
    factory: ProviderFactory
    dev: bool = False
    _built: dict[str, Provider] = field(default_factory=dict)
    _announced: set[str] = field(default_factory=set)

    @classmethod
    def from_config(
        cls,
        models: ModelsFile,
        factory: ProviderFactory,
        env: Mapping[str, str] | None = None,
        dev: bool = False,
    ) -> ModelRegistry:
        env = os.environ if env is None else env
        endpoints = {
            name: Endpoint(
                name,
                config,
                api_key=env.get(config.key_env) or None if config.key_env else None,
                base_url=config.base_url
                or (env.get(config.base_url_env) if config.base_url_env else None)
                or None,
            )
            for name, config in models.providers.items()
        }
        return cls(endpoints, dict(models.aliases), factory, dev)

    def route(self, model: str) -> tuple[Endpoint, str] | None:
        """The endpoint serving ``model`` and the upstream model id, or None for an unknown name."""
        target = self.aliases.get(model, model)
        for endpoint in self.endpoints.values():
            prefix = endpoint.config.prefix
            if prefix and target.startswith(prefix) and len(target) > len(prefix):
                return endpoint, target[len(prefix) :]
        for endpoint in self.endpoints.values():
            if any(fnmatch.fnmatchcase(target, pattern) for pattern in endpoint.config.models):
                return endpoint, target
        return None

    def resolve(self, model: str) -> Resolved:
        routed = self.route(model)
        if routed is None:
            raise ValidationFailed(f"Unknown model {model!r}.", code="unknown_model")
        endpoint, upstream = routed
        if endpoint.configured:
            return Resolved(self.provider(endpoint), model, upstream)
        if self.dev and "demo" in self.endpoints:
            self._announce_stand_in(model, endpoint)
            return Resolved(
                self.provider(self.endpoints["demo"]), model, upstream, stand_in_for=endpoint.name
            )
        raise ValidationFailed(
            f"Model {model!r} is served by the {endpoint.name} provider, which is not configured: "
            f"set {endpoint.config.key_env}.",
            code="provider_not_configured",
        )

    def provider_names(self) -> list[str]:
        """The providers that can answer (configured ones)."""
        return [endpoint.name for endpoint in self.endpoints.values() if endpoint.configured]

    def provider(self, endpoint: Endpoint) -> Provider:
        if endpoint.name not in self._built:
            self._built[endpoint.name] = self.factory(endpoint)
        return self._built[endpoint.name]

    async def aclose(self) -> None:
        for provider in self._built.values():
            await provider.aclose()
        self._built.clear()

    def describe(self) -> list[dict[str, Any]]:
        """What ``GET /api/v1/models`` lists: every endpoint's names and whether it can answer."""
        rows = []
        for endpoint in self.endpoints.values():
            names = list(endpoint.config.models)
            if endpoint.config.prefix:
                names.append(endpoint.config.prefix + "*")
            aliases = {a: t for a, t in self.aliases.items() if (r := self.route(t)) and r[0] is endpoint}
            rows.append(
                {
                    "provider": endpoint.name,
                    "kind": endpoint.config.kind,
                    "models": names,
                    "aliases": aliases,
                    "key_env": endpoint.config.key_env or None,
                    "configured": endpoint.configured,
                    "base_url": endpoint.base_url,
                    "served_by": endpoint.name if endpoint.configured else ("demo" if self.dev else None),
                }
            )
        return rows

    def _announce_stand_in(self, model: str, endpoint: Endpoint) -> None:
        if model not in self._announced:
            self._announced.add(model)
            log.warning(
                "dev mode: model %r belongs to the %s provider, which is not configured (set %s); "
                "the offline demo model answers instead",
                model,
                endpoint.name,
                endpoint.config.key_env,
            )


def build_provider(endpoint: Endpoint) -> Provider:
    """The adapter for an endpoint's kind; vendor SDKs are imported only when used."""
    config = endpoint.config
    if config.kind == "demo":
        from parley.providers.demo import DemoProvider

        return DemoProvider()
    if config.kind == "anthropic":
        from parley.providers.anthropic import AnthropicProvider

        return AnthropicProvider(
            endpoint.name, api_key=endpoint.api_key, base_url=endpoint.base_url, timeout_s=config.timeout_s
        )
    from parley.providers.openai import OpenAIProvider

    return OpenAIProvider(
        endpoint.name,
        api_key=endpoint.api_key,
        base_url=endpoint.base_url,
        timeout_s=config.timeout_s,
        headers=config.headers or None,
    )
