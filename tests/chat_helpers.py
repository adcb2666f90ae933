"""Harness for ``parley chat`` tests: the real command in a subprocess, on a pipe or a pseudo-terminal, and a
TCP proxy between it and the server that a test can cut."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

WAIT_S = 15.0
ANSI = re.compile(rb"\x1b\[[0-9;]*m")
CLIENT_ENV = ("JWT_TOKEN", "BACKEND_WS_URL")


def free_port() -> int:
    """A loopback port nothing listens on (for the moment)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def chat_env(data_dir: Path) -> dict[str, str]:
    """The test's environment without Parley's settings or a token, with its own data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_") and k not in CLIENT_ENV}
    env["PARLEY_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def chat_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "parley", "chat", *args]


@dataclass
class Piped:
    """``parley chat`` with stdout and stderr on pipes, stdout read as it arrives."""

    proc: asyncio.subprocess.Process
    out: bytearray = field(default_factory=bytearray)

    async def read_until(self, marker: bytes, timeout: float = WAIT_S) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while marker not in self.out:
                chunk = await self.proc.stdout.read(4096)
                assert chunk, f"stdout ended before {marker!r}: {bytes(self.out)!r}"
                self.out += chunk

    async def finish(self, timeout: float = WAIT_S) -> tuple[int, str, str]:
        """Wait for the exit: (code, all of stdout, stderr)."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            rest, err = await asyncio.gather(self.proc.stdout.read(), self.proc.stderr.read())
            code = await self.proc.wait()
        return code, (bytes(self.out) + rest).decode(), err.decode()


@asynccontextmanager
async def piped_chat(env: dict[str, str], cwd: Path, *args: str) -> AsyncIterator[Piped]:
    proc = await asyncio.create_subprocess_exec(
        *chat_command(*args),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield Piped(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_chat(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    async with piped_chat(env, cwd, *args) as chat:
        return await chat.finish()


def _controlling_terminal() -> None:
    """In the child, after setsid: stdin (the pty) becomes its terminal, so Ctrl-C there is its SIGINT."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """``parley chat`` on a pseudo-terminal: what a person sees, and keys typed into it."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str) -> None:
        self.master, slave = os.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] |= termios.NOFLSH  # keep output already written when Ctrl-C arrives: the test reads it all
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.proc = subprocess.Popen(
            chat_command(*args),
            env=env,
            cwd=cwd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_controlling_terminal,
        )
        os.close(slave)
        self.screen = bytearray()
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self.master)
        self.screen += chunk
        self._changed.set()

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    async def expect(self, marker: bytes, start: int = 0, timeout: float = WAIT_S) -> int:
        """Wait until ``marker`` is on the screen after ``start``; the offset just past it."""
        try:
            async with asyncio.timeout(timeout):
                while (found := self.screen.find(marker, start)) < 0:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no {marker!r} on the screen after {timeout} s: {bytes(self.screen)!r}"
            ) from None
        return found + len(marker)

    def text(self, start: int = 0, end: int | None = None) -> str:
        """What the screen shows: no colours, no echoed ``^C``, the tty's CRLF as LF."""
        raw = ANSI.sub(b"", bytes(self.screen[start:end])).replace(b"^C", b"").replace(b"\r\n", b"\n")
        return raw.decode()

    async def wait(self, timeout: float = WAIT_S) -> int:
        return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.master)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        os.close(self.master)


class Proxy:
    """A TCP relay to the server: ``cut()`` drops every connection through it with nothing said;
    while ``refusing``, new connections are closed at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self.refusing = False
        self._links: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def ws_url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/chat/ws"

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        for writer in self._links:
            writer.transport.abort()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._links += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        sink.transport.abort()


def one_line(stderr: str) -> str:
    """The single ``parley:`` line a refusal prints, and nothing else (no traceback)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parley: "), stderr
    return lines[0]
