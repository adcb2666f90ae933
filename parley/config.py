"""Settings: environment variables with the ``PARLEY_`` prefix, or a ``.env`` file."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Dialect = Literal["camel", "snake"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
LogFormat = Literal["text", "json"]

DEV_SECRET_FILE = "jwt_secret"
_ASYNC_DRIVERS = {
    "postgresql://": "postgresql+asyncpg://",
    "postgres://": "postgresql+asyncpg://",
    "sqlite://": "sqlite+aiosqlite://",
}


class Settings(BaseSettings):
    """Everything Parley can be told from outside. Defaults are the PROTOCOL's limits."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_", env_file=".env", extra="ignore")

    dev: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: LogLevel = "info"
    log_format: LogFormat = Field(default="text", description="text, or json: one JSON object a line")
    data_dir: Path = Path(".parley")
    database_url: str | None = None
    database_connect_timeout_s: float = Field(default=10.0, gt=0)

    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = Field(default=None, description="RS256 public key (PEM text or a file path)")
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    event_dialect: Dialect = "camel"
    models_file: Path | None = Field(default=None, description="TOML file of provider endpoints and aliases")
    context_budget_chars: int = Field(default=400_000, ge=1000)
    auto_title: bool = Field(default=False, description="a model-written title after the first answer")
    metrics: bool = Field(default=True, description="GET /metrics, Prometheus's text format; false: off")

    mcp_file: Path | None = Field(default=None, description="TOML file of MCP servers whose tools to offer")
    tool_timeout_s: float = Field(default=30.0, gt=0, description="the longest one tool call may run")
    tool_max_output_chars: int = Field(default=20_000, ge=200, description="longer tool output is cut")
    max_tool_steps: int = Field(default=10, ge=1, le=100, description="model steps in one agentic turn")

    max_frame_bytes: int = Field(default=1024 * 1024, ge=1024)
    # REST request bodies (an import is the big one): larger ones get 413 unread. An import is parsed whole;
    # measured peaks above an idle server: 8 MiB of 10,000 messages +99 MiB (16 MiB: +146 MiB), and a
    # 51 MB import without a limit +463 MiB. 8 MiB holds 10,000 messages of about 800 characters.
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_prompt_chars: int = Field(default=100_000, ge=1)
    max_queued_requests: int = Field(default=8, ge=0)
    # Turns one customer may have running or waiting at once, over all its connections (a disconnect
    # detaches a turn, it does not end it), and the longest a turn may run before it is stopped, its answer
    # stored as cancelled with error code ``turn_too_long``. 100: a customer whose one token serves many
    # users at once must not hit it in normal use (the benchmark's 1,000 streams are 63 per customer).
    max_turns_per_customer: int = Field(default=100, ge=1)
    max_turn_s: float = Field(default=1800.0, gt=0)
    idle_timeout_s: float = Field(default=30 * 60, gt=0)
    send_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    send_stall_timeout_s: float = Field(default=10.0, gt=0)
    coalesce_ms: float = Field(default=0, ge=0, le=1000)
    # Each streaming answer is saved this often. One second cost the 1,000-paced-streams benchmark half its
    # throughput (1,000 checkpoint writes a second; gap p99 405 ms); five seconds: gap p99 73 ms.
    checkpoint_interval_s: float = Field(default=5.0, gt=0)
    provider_attempts: int = Field(default=3, ge=1, le=10)
    provider_retry_backoff_s: float = Field(default=0.25, ge=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # Resume (docs/protocol.md section 5): how long a turn's events are kept after its last one, and how
    # many bytes the logs of all turns, and of one turn, may keep.
    resume_ttl_s: float = Field(default=600.0, gt=0)
    resume_buffer_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    resume_turn_bytes: int = Field(default=16 * 1024 * 1024, ge=4 * 1024)
    # A server process renews its lease on the answers it streams every third of this; answers of a
    # process whose lease has run out are closed as interrupted (parley/recovery.py).
    owner_lease_s: float = Field(default=15.0, ge=0.3)
    # Scale-out: processes given the same PostgreSQL database and this Redis behave as one server
    # (docs/deploy.md). Unset: turns, their logs and their cancels stay in this process.
    redis_url: str | None = None
    ws_ping_interval_s: float | None = 20.0
    # A connection whose request head (a WebSocket upgrade, a REST request) is not complete this long after it
    # opened (on a kept-alive connection: after the next request's first byte) is closed (408): a half-open
    # handshake holds no socket for ever.
    handshake_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL; plain ``postgresql://`` and ``sqlite:///`` get their async drivers."""
        if not self.database_url:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'parley.db').resolve()}"
        for plain, driver in _ASYNC_DRIVERS.items():
            if self.database_url.startswith(plain):
                return driver + self.database_url[len(plain) :]
        return self.database_url

    def signing_secret(self) -> str | None:
        """The HS256 secret: configured, else (dev mode) the one kept in the data directory."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        path = self.data_dir / DEV_SECRET_FILE
        if path.exists():
            return path.read_text().strip()
        return None

    def ensure_dev_secret(self) -> str:
        """Return the dev secret, creating it (mode 0600) the first time."""
        existing = self.signing_secret()
        if existing is not None:
            return existing
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / DEV_SECRET_FILE
        value = secrets.token_urlsafe(48)
        path.write_text(value + "\n")
        path.chmod(0o600)
        return value

    def public_key_pem(self) -> str | None:
        key = self.jwt_public_key
        if key is None or "BEGIN" in key:
            return key
        return Path(key).read_text()
