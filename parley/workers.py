"""``parley serve --workers N``: N server processes on one port, and a parent that keeps them running.

The parent binds the socket and starts each worker with it (the ``spawn`` start method: a fresh
interpreter, nothing inherited but the socket); each accepts from it, so a connection goes to whichever
worker accepts it first (docs/deploy.md). The workers share nothing in memory: they are the processes of a
cluster (parley/cluster/), which is why N > 1 needs Redis and PostgreSQL. SIGTERM or SIGINT to the parent
is passed to every worker (as SIGTERM), and each drains its turns as a lone server would; a worker that
dies otherwise is started again, and a worker whose parent was killed outright drains and exits.

Metrics: the workers keep theirs in files of one directory (``PROMETHEUS_MULTIPROC_DIR``, set up by
``metrics_directory`` before the server is imported), so that ``/metrics`` on any of them shows the sum
(parley/metrics.py); the parent drops a dead worker's gauges.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from parley import logs
from parley.config import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # parley/metrics.py reads it when it is imported

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


@contextlib.contextmanager
def metrics_directory(enabled: bool, workers: int) -> Iterator[None]:
    """Where the processes of this ``parley serve`` keep their metrics, set up before parley.metrics is
    imported (prometheus-client picks its mode then): ``PROMETHEUS_MULTIPROC_DIR`` when given, emptied of
    an earlier run's files (their counts are not this run's); else, for several workers, a temporary one,
    named to them through the environment they inherit and removed after; else none (in memory)."""
    given = os.environ.get(MULTIPROC_ENV)
    if not enabled or (not given and workers == 1):
        yield
        return
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="parley-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield
    finally:
        if not given:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(path, ignore_errors=True)


def run_workers(settings: Settings, workers: int, updates: dict[str, Any]) -> int:
    """Run ``workers`` server processes until SIGTERM/SIGINT; 0 when every one drained and exited cleanly.
    Inside ``metrics_directory`` (the caller's), so that the workers' metrics add up."""
    given = os.environ.get(MULTIPROC_ENV) if settings.metrics else None
    metrics_dir = Path(given) if given else None
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
                    if metrics_dir is not None and process.pid is not None:
                        forget_gauges(metrics_dir, process.pid)  # its turns and connections are gone
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
    return 0 if all(stopped_cleanly(p.exitcode) for p in processes) else 1


def stopped_cleanly(exitcode: int | None) -> bool:
    """Drained and exited; or ended by the SIGTERM itself, which only happens to a worker still starting
    (before it handles the signal: it had no turns yet), as when the whole process group is signalled."""
    return exitcode in (0, -signal.SIGTERM)


def forget_gauges(metrics_dir: Path, pid: int) -> None:
    """A dead worker's live gauges (``parley_turns_active``, ``parley_connections_active``) stop counting;
    its counters and histograms stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]


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
