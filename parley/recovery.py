"""Recovery after a crash: this process's lease on the answers it streams, and the sweep that closes the
answers of processes that died.

Each answer row names its owner, the process streaming it (``chat_messages.owner_id``). Each process holds a
lease, a row in ``parley_processes`` it renews every third of ``PARLEY_OWNER_LEASE_S``. At start and at
every renewal, a process closes the streaming answers whose owner holds no live lease: status ``error``,
``error_code: "interrupted"``, the content as last stored. A live process renews its lease, so its answers
are never closed by another, however many start and stop beside it on the same database.

A crash is usually seen sooner than the lease: a process on the same host (same boot, same PID namespace)
checks whether the owner's PID still runs the same program it registered, so a server restarted after a
``kill -9`` closes the killed one's answers as it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from parley.errors import DatabaseFailed
from parley.store.owners import CloseOrphans, ListProcesses, ProcessInfo, Renew, Retire
from parley.store.repository import Store
from parley.store.tables import utcnow

log = logging.getLogger("parley.recovery")


def host_key() -> str | None:
    """This host and PID namespace (PIDs mean the same process only within one), or None off Linux."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}"


def pid_started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None when there is no such process: with
    the PID, it names one process even after the PID is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    if fields and fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent: it runs nothing
        return None
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5): starttime


def this_process(process_id: str) -> ProcessInfo:
    pid = os.getpid()
    return ProcessInfo(process_id, socket.gethostname()[:255], pid, host_key(), pid_started(pid))


def exited(rows: list[Any], me: ProcessInfo) -> tuple[str, ...]:
    """The processes among ``rows`` that ran on this host and are no longer running."""
    if me.host_key is None:
        return ()
    return tuple(
        row.id
        for row in rows
        if row.id != me.id
        and row.host_key == me.host_key
        and row.pid_started is not None
        and pid_started(row.pid) != row.pid_started
    )


class Lease:
    """This process's lease, renewed in the background, and the sweep for orphaned answers."""

    def __init__(
        self,
        store: Store,
        lease_s: float,
        checkpoint_interval_s: float,
        recover: Callable[[tuple[str, ...]], Awaitable[int]] | None = None,
    ) -> None:
        self._store = store
        # With Redis (parley/cluster/): close the turns of processes seen to have exited from their logs
        # first, so their clients elsewhere see the end and their answers keep all that was streamed.
        self._recover = recover
        self._lease_s = lease_s
        # An answer from before owners were recorded is orphaned once it has not been written for longer
        # than any live turn leaves between two checkpoints.
        self._legacy_idle = timedelta(seconds=max(lease_s, 3 * checkpoint_interval_s))
        self.me = this_process(store.owner_id)
        self.closed = 0  # answers this process closed as interrupted, in all

    async def start(self) -> None:
        """Register, then close what dead processes left behind (a failure is logged, not fatal)."""
        await self.tick()

    async def run(self) -> None:
        """Renew and sweep every third of the lease, until cancelled (the lifespan owns this task)."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            await self.tick()

    async def tick(self) -> int:
        """Renew the lease, then close orphaned answers; return how many were closed."""
        try:
            await self._store.run(Renew(self.me), "The lease could not be renewed.")
            rows = await self._store.run(ListProcesses(), "The processes could not be read.")
            dead = exited(list(rows), self.me)
            if dead and self._recover is not None:
                await self._recover(dead)
            sweep = CloseOrphans(self._lease_s, dead, utcnow() - self._legacy_idle)
            closed = await self._store.run(sweep, "Orphaned answers could not be closed.")
        except DatabaseFailed as exc:
            log.warning("lease renewal and recovery sweep failed: %s (%r)", exc.message, exc.__cause__)
            return 0
        if closed:
            log.warning("closed %d answer(s) left streaming by a server process that stopped", closed)
            self.closed += closed
            self._store.metrics.interrupted(closed)
        return closed

    async def stop(self) -> None:
        """Give the lease up (after this process's turns have ended)."""
        with contextlib.suppress(DatabaseFailed):
            await self._store.run(Retire(self.me.id), "The lease could not be given up.")


def new_process_id() -> str:
    return uuid.uuid4().hex
