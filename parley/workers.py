"""``parley serve --workers N``: N server processes on one port, and a parent that keeps them running.

The parent binds the socket and starts each worker with it (the ``spawn`` start method: a fresh
interpreter, nothing inherited but the socket), so the kernel spreads connections over the workers. The
workers share nothing in memory: they are the processes of a cluster (parley/cluster/), which is why N > 1
needs Redis and PostgreSQL. SIGTERM or SIGINT to the parent is passed to every worker (as SIGTERM), and each
drains its turns as a lone server would; a worker that dies otherwise is started again, and a worker whose
parent was killed outright drains and exits.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from parley import logs
from parley.config import Settings

log = logging.getLogger("parley.workers")

RESPAWN_PAUSE_S = 1.0
POLL_S = 0.2


def refusal(settings: Settings, workers: int) -> str | None:
    """Why ``workers`` processes cannot run with these settings (None: they can)."""
    if workers < 1:
        return f"--workers must be at least 1, not {workers}"
    if workers == 1:
        return None
    missing = []
    if not settings.redis_url:
        missing.append("PARLEY_REDIS_URL")
    if not settings.resolved_database_url.startswith("postgresql"):
        missing.append("a PostgreSQL PARLEY_DATABASE_URL")
    if missing:
        return (
            f"--workers {workers} needs {' and '.join(missing)}: the processes share turns through Redis "
            "and data through PostgreSQL (docs/deploy.md)"
        )
    return None


def bind(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_workers(settings: Settings, workers: int, updates: dict[str, Any]) -> int:
    """Run ``workers`` server processes until SIGTERM/SIGINT; 0 when every one drained and exited cleanly."""
    sock = bind(settings)
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def start(index: int) -> BaseProcess:
        process = context.Process(target=serve_worker, args=(updates, sock), name=f"parley-worker-{index}")
        process.start()
        return process

    processes = [start(i) for i in range(workers)]
    log.info("parley: %d workers on http://%s:%d", workers, settings.host, settings.port)
    try:
        while not stopping:
            time.sleep(POLL_S)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.warning(
                        "worker %d (pid %s) exited with %s; starting it again",
                        index,
                        process.pid,
                        process.exitcode,
                    )
                    time.sleep(RESPAWN_PAUSE_S)
                    processes[index] = start(index)
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                send_signal(process.pid, signal.SIGTERM)
        for process in processes:
            process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return 0 if all(p.exitcode == 0 for p in processes) else 1


def send_signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def serve_worker(updates: dict[str, Any], sock: socket.socket) -> None:
    """One worker: the app on the shared socket (the target of each worker process)."""
    from parley.app import create_app
    from parley.server import ParleyServer

    settings = Settings().model_copy(update=updates)
    log_config = logs.configure(settings)
    server = ParleyServer(create_app(settings), settings, log_config=log_config)
    parent = os.getppid()

    def orphaned() -> None:  # the parent was killed outright: drain and exit, as on SIGTERM
        while os.getppid() == parent:
            time.sleep(1.0)
        server.handle_exit(signal.SIGTERM, None)

    threading.Thread(target=orphaned, name="parley-parent-watch", daemon=True).start()
    server.run(sockets=[sock])
    sys.exit(0)
