"""Settings: database URLs get their async drivers; the dev secret is made once and kept."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from parley.config import Settings


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://h/db", "postgresql+asyncpg://h/db"),
        ("sqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
        ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db"),
    ],
)
def test_database_urls_get_async_drivers(given: str, expected: str) -> None:
    assert Settings(database_url=given).resolved_database_url == expected


def test_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    url = Settings(data_dir=tmp_path).resolved_database_url
    assert url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/parley.db"


def test_dev_secret_is_created_once_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.signing_secret() is None
    secret = settings.ensure_dev_secret()
    assert len(secret) >= 32
    assert Settings(data_dir=tmp_path / "data").ensure_dev_secret() == secret
    mode = stat.S_IMODE((tmp_path / "data" / "jwt_secret").stat().st_mode)
    assert mode == 0o600


def test_configured_secret_wins(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, jwt_secret="configured-secret-value")
    settings.ensure_dev_secret()
    assert settings.signing_secret() == "configured-secret-value"


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_MAX_QUEUED_REQUESTS", "3")
    monkeypatch.setenv("PARLEY_EVENT_DIALECT", "snake")
    settings = Settings()
    assert settings.max_queued_requests == 3
    assert settings.event_dialect == "snake"
