"""Model routing: built-ins, aliases, named endpoints from the models file, keys from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.errors import ValidationFailed
from parley.providers.base import Provider
from parley.providers.demo import DemoProvider
from parley.providers.registry import Endpoint, ModelRegistry, load_models_file


class Recorder(DemoProvider):
    """A provider that remembers the endpoint it was built for."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name


def registry(env: dict[str, str], path: Path | None = None, dev: bool = False) -> ModelRegistry:
    def factory(endpoint: Endpoint) -> Provider:
        return Recorder(endpoint)

    return ModelRegistry.from_config(load_models_file(path), factory, env=env, dev=dev)


def endpoint_of(provider: Provider) -> Endpoint:
    assert isinstance(provider, Recorder)
    return provider.endpoint


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o-mini", "openai"),
        ("o1-preview", "openai"),
        ("o3-mini", "openai"),
        ("o4-mini", "openai"),
        ("chatgpt-4o-latest", "openai"),
        ("claude-sonnet-4-5", "anthropic"),
        ("claude-mini", "anthropic"),
        ("demo", "demo"),
    ],
)
def test_builtin_routes(model: str, provider: str) -> None:
    env = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a"}
    resolved = registry(env).resolve(model)
    assert resolved.provider.name == provider
    assert resolved.model == model


def test_alias_maps_to_the_upstream_model() -> None:
    resolved = registry({"ANTHROPIC_API_KEY": "sk-a"}).resolve("claude-mini")
    assert resolved.upstream_model.startswith("claude-")
    assert resolved.upstream_model != "claude-mini"


def test_keys_and_base_urls_come_from_the_sdk_variables() -> None:
    env = {"OPENAI_API_KEY": "sk-o", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    endpoint = endpoint_of(registry(env).resolve("gpt-4o").provider)
    assert endpoint.api_key == "sk-o"
    assert endpoint.base_url == "http://127.0.0.1:9/v1"


def test_unknown_and_unconfigured_models() -> None:
    plain = registry({})
    with pytest.raises(ValidationFailed) as unknown:
        plain.resolve("no-such-model")
    assert unknown.value.code == "unknown_model"
    with pytest.raises(ValidationFailed) as missing:
        plain.resolve("claude-mini")
    assert missing.value.code == "provider_not_configured"
    assert "ANTHROPIC_API_KEY" in missing.value.message
    assert plain.resolve("demo").provider.name == "demo"


def test_dev_mode_lets_demo_stand_in() -> None:
    resolved = registry({}, dev=True).resolve("gpt-4o-mini")
    assert resolved.provider.name == "demo"
    assert resolved.stand_in_for == "openai"


def test_models_file_adds_endpoints_patterns_and_aliases(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        """
[providers.ollama]
kind = "openai"
base_url = "http://127.0.0.1:11434/v1"
prefix = "ollama/"

[providers.groq]
kind = "openai"
base_url = "https://api.groq.example/openai/v1"
key_env = "GROQ_API_KEY"
models = ["llama-*", "gpt-oss-*"]

[providers.openai]
base_url = "http://127.0.0.1:8999/v1"

[aliases]
fast = "ollama/llama3.2"
"""
    )
    reg = registry({"GROQ_API_KEY": "gk", "OPENAI_API_KEY": "sk"}, path)
    local = reg.resolve("ollama/qwen2.5:7b")
    assert local.provider.name == "ollama"
    assert local.upstream_model == "qwen2.5:7b"
    assert endpoint_of(local.provider).api_key is None  # keyless local server: configured all the same
    alias = reg.resolve("fast")
    assert (alias.provider.name, alias.upstream_model) == ("ollama", "llama3.2")
    # A pattern claimed in the file wins over a built-in one.
    assert reg.resolve("gpt-oss-20b").provider.name == "groq"
    # A file entry for a built-in provider changes only what it names.
    openai = endpoint_of(reg.resolve("gpt-4o").provider)
    assert openai.base_url == "http://127.0.0.1:8999/v1"
    assert openai.config.key_env == "OPENAI_API_KEY"
    assert reg.resolve("gpt-4o").provider is reg.resolve("gpt-4o-mini").provider  # built once


def test_models_file_errors_are_clear(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text("[providers.x]\nkind = 'nope'\n")
    with pytest.raises(ValueError, match="kind"):
        load_models_file(path)
    path.write_text("not toml [")
    with pytest.raises(ValueError, match="models file"):
        load_models_file(path)


def test_describe_lists_configuration_without_keys() -> None:
    rows = {row["provider"]: row for row in registry({"OPENAI_API_KEY": "sk-secret"}).describe()}
    assert rows["openai"]["configured"] is True
    assert rows["anthropic"]["configured"] is False
    assert rows["anthropic"]["key_env"] == "ANTHROPIC_API_KEY"
    assert "claude-mini" in rows["anthropic"]["aliases"]
    assert "sk-secret" not in repr(rows)


def test_a_named_endpoint_needs_a_base_url(tmp_path: Path) -> None:
    """Without one, the SDK would send that endpoint's key to the vendor's own API."""
    path = tmp_path / "models.toml"
    path.write_text('[providers.groq]\nkind = "openai"\nkey_env = "GROQ_API_KEY"\nmodels = ["llama-*"]\n')
    with pytest.raises(ValueError, match="base_url"):
        load_models_file(path)
