"""What the numbers were measured on: cores, memory, kernel, Python, library versions, the code's commit."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.metrics import CLOCK_TICKS

LIBRARIES = (
    "uvicorn",
    "starlette",
    "fastapi",
    "websockets",
    "uvloop",
    "httptools",
    "orjson",
    "pydantic",
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "matplotlib",
)


def _first_line_with(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "unknown"


def memory_total_bytes() -> int:
    value = _first_line_with("/proc/meminfo", "MemTotal")
    return int(value.split()[0]) * 1024 if value != "unknown" else 0


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision(repo: Path) -> str:
    """The commit and whether Parley's files differ from it (read-only git commands)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain", "--", "parley"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} with uncommitted changes in parley/" if changed else commit


def describe(revision: str, postgres: str | None) -> dict[str, Any]:
    return {
        "cpu": _first_line_with("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)),
        "memory_bytes": memory_total_bytes(),
        "kernel": platform.release(),
        "os": _first_line_with("/etc/os-release", "PRETTY_NAME"),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "libraries": library_versions(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": postgres or "not reachable",
        "revision": revision,
        "clock_ticks": CLOCK_TICKS,
    }
