"""Running Parley under uvicorn, with a shutdown that lets running turns finish before sockets close."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import socket
import threading
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

from parley.config import Settings
from parley.services import Runtime
from parley.uvicorn_ws import edge_protocols

FLUSH_BEFORE_CLOSE_S = 2.0


class ParleyServer(uvicorn.Server):
    """uvicorn's server, but on SIGTERM running turns get the grace period while their sockets stay open.

    uvicorn alone would close every WebSocket (1012) first; here the order is: stop accepting, drain
    turns (new requests are refused), cancel and persist what is left, then close connections.
    """

    def __init__(self, app: FastAPI, settings: Settings, **overrides: object) -> None:
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            ws_max_size=settings.max_frame_bytes,
            ws_per_message_deflate=False,
            ws_ping_interval=settings.ws_ping_interval_s,
            ws_ping_timeout=settings.ws_ping_interval_s,
            log_level=settings.log_level,
            lifespan="on",
            **edge_protocols(settings.handshake_timeout_s),
            **overrides,  # type: ignore[arg-type]
        )
        super().__init__(config)
        install_log_redaction()
        self.app = app
        self.settings = settings

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        runtime: Runtime | None = getattr(self.app.state, "runtime", None)
        if runtime is not None:
            await runtime.supervisor.drain(self.settings.shutdown_grace_s, hurry=lambda: self.force_exit)
            await runtime.supervisor.flush(FLUSH_BEFORE_CLOSE_S)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's handlers for SIGINT/SIGTERM, without re-raising the signal afterwards: a drained
        shutdown is a clean one, so ``parley serve`` exits 0 (and Ctrl-C prints no traceback)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    @property
    def bound_port(self) -> int:
        """The port actually bound (useful with ``port=0``)."""
        port: int = self.servers[0].sockets[0].getsockname()[1]
        return port


class RedactTokens(logging.Filter):
    """Keep tokens out of logs: uvicorn logs a WebSocket's path with its query string."""

    _pattern = re.compile(r"(token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                self._pattern.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args
            )
        elif isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = self._pattern.sub(r"\1[redacted]", record.msg)
        return True


def install_log_redaction() -> None:
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
