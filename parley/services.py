"""The types the app's parts share, in a module of their own so that no two of those parts import each other:
what a turn needs (``TurnServices``), where its events go (``Channel``), what the lifespan built
(``Runtime``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from starlette.requests import HTTPConnection

from parley.auth import TokenVerifier
from parley.config import Settings
from parley.metrics import Metrics
from parley.protocol import EventLog
from parley.providers.registry import ModelRegistry
from parley.store.repository import Store
from parley.streams import TurnStreams
from parley.tasks import Supervisor
from parley.tools import ToolRegistry

if TYPE_CHECKING:
    from parley.cluster import Cluster
    from parley.tools import McpManager


class Channel(EventLog, Protocol):
    """Where a turn's events go (its log). ``congested`` asks the turn to ``wait_ready`` before more."""

    congested: bool

    async def wait_ready(self) -> None: ...


@dataclass
class TurnServices:
    """What every turn needs; built once by the app's lifespan."""

    settings: Settings
    store: Store
    registry: ModelRegistry
    streams: TurnStreams
    supervisor: Supervisor | None = None  # owns work that outlives a turn (model-written titles)
    tools: ToolRegistry = field(default_factory=ToolRegistry)  # built-ins and MCP tools, for agentic turns
    cluster: Cluster | None = None  # with PARLEY_REDIS_URL: the other processes' turns (parley/cluster/)

    @property
    def metrics(self) -> Metrics:
        """What /metrics shows (parley/metrics.py): the store's, which times the writes too."""
        return self.store.metrics


@dataclass
class Runtime:
    """Everything the lifespan built, handed to routes through ``app.state.runtime``."""

    settings: Settings
    verifier: TokenVerifier
    services: TurnServices
    supervisor: Supervisor
    mcp: McpManager | None = None  # the MCP servers' sessions, for their status

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def streams(self) -> TurnStreams:
        return self.services.streams

    @property
    def cluster(self) -> Cluster | None:
        return self.services.cluster


def runtime_of(connection: HTTPConnection) -> Runtime:
    runtime: Runtime = connection.app.state.runtime
    return runtime
