"""Parley: a self-hostable chat backend — streaming chat over WebSocket with persistent sessions."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("parley")  # pyproject.toml's, as installed
except PackageNotFoundError:  # pragma: no cover - a tree that was never installed
    __version__ = "0+unknown"
