"""``--profile``: py-spy samples the Parley server in each case's measuring window; the samples, summed up.

py-spy reads the server's memory from outside (``--nonblocking``: the server is never paused), so the server
runs as it does unprofiled. Its raw output is collapsed stacks, one line per distinct stack and thread:
``frame;frame;...;leaf COUNT``, each frame ``function (path/to/file.py:LINE)``, root first. The summary
answers "where did the server's time go": the share of samples per library of the leaf frame's file (a
*bucket*), per function (inclusive and own) and per thread. py-spy leaves out sleeping threads, so the
shares are of the time the server's threads were running or ready to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import pinned_to

RATE_HZ = 50  # py-spy shares the generator's core: at 250 Hz it slowed the generator enough to skew latencies
TOP = 15
PROFILE_DIR = "profiles"  # beside report.md: the raw stacks, one file per profiled case
FINISH_SLACK_S = 30.0  # py-spy stops by itself after --duration; this only guards against a hung one
USUAL_OUTPUT = ("Sampling process", "Wrote raw flamegraph data", "You can use the flamegraph")

EVENT_LOOP = "event loop (native I/O, callbacks)"
THREADING = "threading (worker threads)"
OTHER = "other"
PARLEY = "parley"
MAIN_THREAD = "main thread"

# Top-level package (or stdlib module) of a file → its bucket. Report order: libraries, then Parley's own.
PACKAGES: dict[str, str] = {
    "sqlalchemy": "sqlalchemy",
    "aiosqlite": "aiosqlite / sqlite3",
    "sqlite3": "aiosqlite / sqlite3",
    "asyncpg": "asyncpg",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",
    "pydantic_settings": "pydantic",
    "websockets": "websockets",
    "uvicorn": "uvicorn",
    "starlette": "starlette / fastapi",
    "fastapi": "starlette / fastapi",
    "orjson": "orjson / json",
    "json": "orjson / json",
    "asyncio": EVENT_LOOP,
    "uvloop": EVENT_LOOP,
    "threading": THREADING,
    "concurrent": THREADING,
}
BUCKETS = [*dict.fromkeys(PACKAGES.values()), PARLEY, OTHER]

# What py-spy puts before the frames with --threads / --subprocesses: `thread (0x7F…)`,
# `thread (1234): MainThread`, `process 1234:"python -m parley serve"`.
NAME_FRAME = re.compile(r"^(?:process|thread) \(?(?:0x)?[0-9a-fA-F]+\b")
THREAD_NAME = re.compile(r"^thread \((?:0x)?[0-9a-fA-F]+\): (?P<name>.+)$")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Everything up to the import root: py-spy shortens paths to it already, unless --full-filenames.
IMPORT_ROOT = re.compile(r"^(?:.*/)?(?:site-packages|dist-packages|python\d+\.\d+)/")


@dataclass(frozen=True)
class Frame:
    """One stack frame without its line number, so that a function's lines add up."""

    func: str
    file: str

    @property
    def module(self) -> str:
        """The file from its import root: ``sqlalchemy/orm/session.py``, ``parley/turn.py``."""
        return IMPORT_ROOT.sub("", self.file)

    @property
    def label(self) -> str:
        return f"{self.func} ({self.module})"


@dataclass(frozen=True)
class Stack:
    """One line of py-spy's raw output: a thread's stack, root first, and how many samples found it."""

    thread: str
    frames: list[Frame]
    count: int

    @property
    def leaf(self) -> Frame:
        return self.frames[-1]


def parse_frame(text: str) -> Frame:
    match = FRAME.match(text)
    return Frame(match["func"], match["file"]) if match else Frame(text, "")


def parse_line(line: str) -> Stack | None:
    """One collapsed-stack line → a ``Stack``; its thread is the name py-spy gave (``--threads``), else
    told from the frames."""
    stack, _, count = line.strip().rpartition(" ")
    if not stack or not count.isdigit():
        return None
    texts = stack.split(";")
    names = []
    while texts and NAME_FRAME.match(texts[0]):
        names.append(texts.pop(0))
    if not texts:
        return None
    frames = [parse_frame(t) for t in texts]
    named = next((m["name"] for m in map(THREAD_NAME.match, names) if m), None)
    return Stack(named or thread_of(frames), frames, int(count))


def bucket(frame: Frame) -> str:
    """The bucket of a frame's file: the first path part that names a known package; Parley by module."""
    parts = frame.module.split("/")
    for index, part in enumerate(parts):
        name = part.removesuffix(".py")
        if name == PARLEY and index < len(parts) - 1:
            return "/".join(parts[index:])
        if name in PACKAGES:
            return PACKAGES[name]
    return OTHER


def is_threading(frame: Frame) -> bool:
    return frame.module == "threading.py"


def thread_of(frames: list[Frame]) -> str:
    """Without py-spy's thread names: the main thread, or a worker thread named by what it runs (its stack
    starts in threading's ``_bootstrap``), e.g. ``SqliteWriter._serve (parley/store/writer.py)``."""
    if not (frames[0].func.endswith("_bootstrap") and is_threading(frames[0])):
        return MAIN_THREAD
    body = next((f for f in frames if not is_threading(f)), frames[-1])
    return f"worker thread: {body.label}"


def function_key(frame: Frame) -> tuple[str, str]:
    return frame.module, frame.func


def common_depth(stacks: list[list[Frame]]) -> int:
    """How many frames, from the root, every one of ``stacks`` shares."""
    depth = 0
    for column in zip(*stacks, strict=False):
        if any(frame != column[0] for frame in column):
            break
        depth += 1
    return depth


def entry_frames(stacks: list[Stack]) -> dict[str, list[Frame]]:
    """Per thread, its entry frames: from its root (the first frame of most of its samples), those every
    stack from that root shares (runpy, uvicorn's ``Server.run``, ``Runner.run``; threading's
    ``_bootstrap``…). They would top the inclusive ranking at their thread's share, saying nothing the
    thread's share does not."""
    by_thread: dict[str, list[Stack]] = {}
    for stack in stacks:
        by_thread.setdefault(stack.thread, []).append(stack)
    entries = {}
    for thread, group in by_thread.items():
        roots: Counter[Frame] = Counter()
        for stack in group:
            roots[stack.frames[0]] += stack.count
        root = roots.most_common(1)[0][0]
        rooted = [stack.frames for stack in group if stack.frames[0] == root]
        entries[thread] = rooted[0][: common_depth(rooted)]
    return entries


def ranked(counter: Counter[Any], limit: int | None = None) -> list[Any]:
    """``[*key, count]`` rows, biggest first (ties by name, so a summary is stable); JSON-ready."""
    rows = sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [[*(key if isinstance(key, tuple) else (key,)), count] for key, count in rows]


def summarize(lines: Iterable[str]) -> dict[str, Any]:
    """Collapsed stacks → a JSON-ready summary, lists biggest first:

    - ``samples``; ``buckets`` and ``threads`` as ``[name, samples]``;
    - the top functions by ``inclusive`` samples (once per sample however often it recurs, leaving out the
      threads' entry frames) and by ``own`` (leaf) samples, as ``[module, function, samples]``;
    - ``entered``: each thread's deepest entry frame;
    - ``partial``: samples whose stack does not start at its thread's root. With ``--nonblocking`` py-spy
      reads a stack while it changes, and then gets only its top part (whose leaf is still right).
    """
    stacks = [s for s in map(parse_line, lines) if s is not None]
    entry = entry_frames(stacks)
    buckets: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    own: Counter[tuple[str, str]] = Counter()
    partial = 0
    for stack in stacks:
        buckets[bucket(stack.leaf)] += stack.count
        threads[stack.thread] += stack.count
        own[function_key(stack.leaf)] += stack.count
        skip = set(entry[stack.thread])
        for key in {function_key(f) for f in stack.frames if f not in skip}:
            inclusive[key] += stack.count
        partial += stack.count if stack.frames[0] != entry[stack.thread][0] else 0
    return {
        "samples": sum(buckets.values()),
        "buckets": ranked(buckets),
        "threads": ranked(threads),
        "inclusive": ranked(inclusive, TOP),
        "own": ranked(own, TOP),
        "entered": {thread: frames[-1].label for thread, frames in entry.items()},
        "partial": partial,
    }


def bucket_group(name: str) -> str:
    """A bucket with Parley's modules folded into one, for comparing cases side by side."""
    return PARLEY if name.startswith(f"{PARLEY}/") else name


# -- running py-spy --------------------------------------------------------------------------------


def find_py_spy() -> Path | None:
    """py-spy beside this Python (the venv's, from the ``bench`` extra), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("py-spy")
    return Path(found) if found else None


def py_spy_version(py_spy: Path) -> str:
    done = subprocess.run([str(py_spy), "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or f"{py_spy.name} (version unknown)"


@dataclass(frozen=True)
class ProfileSetup:
    """What ``--profile`` needs: the py-spy binary, where the raw stacks go, which cores py-spy runs on."""

    py_spy: Path
    directory: Path
    cores: set[int]


def py_spy_notes(said: str) -> list[str]:
    """What py-spy said beyond its usual lines (falling behind, failing to read the server), for the report:
    either makes the profile less exact. Its count of failed samples is in the "Wrote …" line."""
    notes = []
    for line in said.splitlines():
        text = line.removeprefix("py-spy>").strip()
        errors = re.search(r"Errors: (\d+)", text)
        if errors and int(errors[1]):
            notes.append(f"{errors[1]} samples could not be read")
        elif text and not text.startswith(USUAL_OUTPUT):
            notes.append(text)
    return list(dict.fromkeys(notes))[:3]


def case_slug(scenario: str, label: str) -> str:
    return f"{scenario}-{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}"


class Recording:
    """py-spy over one server's measuring window: started when the generator says the window opens,
    stopped by itself after the window (rounded up to whole seconds), then summed up."""

    def __init__(self, setup: ProfileSetup, pid: int, name: str) -> None:
        self.setup = setup
        self.pid = pid
        self.output = setup.directory / f"{name}.txt"
        self.seconds = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.problem = "not recorded: the measuring window never started"

    async def start(self, window_s: float) -> None:
        if self.proc is not None:
            return
        self.seconds = max(1, math.ceil(window_s))
        try:
            self.proc = await self._spawn()
        except OSError as exc:  # not executable, gone since it was found: the run goes on unprofiled
            self.problem = f"py-spy could not be started: {exc!r}"

    async def _spawn(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            str(self.setup.py_spy),
            *("record", "--pid", str(self.pid), "--rate", str(RATE_HZ), "--nonblocking"),
            *("--format", "raw", "--output", str(self.output), "--duration", str(self.seconds), "--threads"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=pinned_to(self.setup.cores),
            start_new_session=True,
        )

    async def finish(self) -> dict[str, Any]:
        """Wait for py-spy and summarise what it wrote; a failure is reported in ``error``, never raised."""
        if self.proc is None:
            return {"error": self.problem}
        profile: dict[str, Any] = {
            "file": f"{PROFILE_DIR}/{self.output.name}",
            "duration_s": self.seconds,
            "rate_hz": RATE_HZ,
        }
        try:
            async with asyncio.timeout(self.seconds + FINISH_SLACK_S):
                said, _ = await self.proc.communicate()
        except TimeoutError:
            self.stop()
            await self.proc.wait()
            return {**profile, "error": f"py-spy did not stop within {FINISH_SLACK_S:.0f}s of its duration"}
        finally:
            self.stop()  # cancelled (Ctrl-C): leave no py-spy behind
        text = said.decode(errors="replace").strip()
        if self.proc.returncode != 0:
            return {**profile, "error": f"py-spy exited with {self.proc.returncode}: {text[-500:]}"}
        with contextlib.suppress(OSError), self.output.open() as raw:
            profile |= summarize(raw)
        if not profile.get("samples"):
            return {**profile, "error": f"py-spy recorded no samples: {text[-500:]}"}
        return {**profile, "notes": py_spy_notes(text)}

    def stop(self) -> None:
        """Kill our py-spy if it is still running (only when something went wrong)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
