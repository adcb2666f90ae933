"""Instructions per delta, Parley beside a baseline revision, counted by callgrind: a steadier reading.

CPU seconds per delta (the ``resume`` scenario) move by ±20% between runs on a shared 2-core machine, more
than the 10% the turn log may cost. callgrind counts the instructions the server executes instead. They
hardly depend on what else the machine does, but not at all is too strong: how often the event loop wakes
with nothing to do depends on how fast the client is, so two runs differ by up to about 2%, the more so the
more loaded the machine is. Both builds of a case run at once, so they share that. Each server runs under
``valgrind --tool=callgrind`` with instrumentation off while it starts and warms up; it is switched on
(``callgrind_control -i on``) for the measured turns only and off again before the server stops, so the count
is the turns' alone: every thread of the server (the event loop, the SQLite writer), the client excluded.

    .venv/bin/python -m bench.instructions     # the working tree ÷ --baseline-rev, 1 and 100 streams
    .venv/bin/python -m bench.instructions --streams 1 --turns 10

What it does not see: time spent waiting on caches and memory (callgrind counts instructions, not cycles), so
a change that only touches more memory shows in the CPU seconds of the ``resume`` scenario, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import websockets

from bench.frames import chat_request, new_request_id
from bench.servers import (
    DEFAULT_BASELINE_REV,
    ParleySource,
    Server,
    ServerKind,
    clean_env,
    export_revision,
    free_port,
    parley_env,
    spawn,
)

WARM_UP_TURNS = 2  # per stream, before counting: imports, caches and the first statements prepared
DELTA_CHARS = 8
START_TIMEOUT_S = 300.0  # Python and Parley's imports under valgrind take a minute or more


@dataclass(frozen=True)
class Count:
    server: ServerKind  # "parley" or "baseline"
    source: str
    streams: int
    turns: int
    deltas: int  # per turn
    instructions: int

    @property
    def per_delta(self) -> float:
        return self.instructions / (self.turns * self.deltas)


def totals(path: Path) -> int:
    """The ``totals:`` line of a callgrind output file: all instructions counted. (Its ``summary:`` line
    comes first and, with instrumentation switched on and off at run time, says 0.)"""
    found = re.search(r"^totals:\s+(\d+)", path.read_text(errors="replace"), re.MULTILINE)
    if found is None:
        raise ValueError(f"{path} holds no totals line")
    return int(found.group(1))


async def run_turns(url: str, token: str, turns: int, deltas: int) -> None:
    """``turns`` turns one after another on one connection, each read to its ``fullProcessComplete``."""
    async with websockets.connect(f"{url}?token={token}", max_size=None, open_timeout=None) as ws:
        for _ in range(turns):
            await ws.send(orjson.dumps(chat_request(new_request_id(), deltas, DELTA_CHARS, 0)).decode())
            while orjson.loads(await ws.recv()).get("type") != "fullProcessComplete":
                pass


async def drive(server: Server, streams: int, turns: int, deltas: int) -> None:
    tokens = server.tokens(streams)
    url = server.ws_url
    await asyncio.gather(*(run_turns(url, t, WARM_UP_TURNS, deltas) for t in tokens))
    callgrind_control("-i", "on", server.pid)
    await asyncio.gather(*(run_turns(url, t, turns // streams, deltas) for t in tokens))
    callgrind_control("-i", "off", server.pid)


def callgrind_control(option: str, value: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, value, str(pid)], check=True, capture_output=True)


def count(
    kind: ServerKind, source: ParleySource, streams: int, turns: int, deltas: int, scratch: Path
) -> Count:
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=scratch))
    out = workdir / "callgrind.out"
    port = free_port()
    secret = new_request_id()
    env = clean_env(parley_env(port, secret, workdir / "data", None), source.path)
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    command += [sys.executable, "-m", "parley", "serve"]
    proc = spawn(command, env, workdir, workdir / "server.log", set())
    server = Server(kind, proc, port, workdir / "server.log", workdir, secret, source=source.path)
    try:
        server.wait_ready(START_TIMEOUT_S)
        asyncio.run(drive(server, streams, turns, deltas))
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)  # a clean exit: callgrind writes its file at exit
            server.proc.wait(START_TIMEOUT_S)
    return Count(kind, source.description, streams, turns, deltas, totals(out))


def builds(base: ParleySource, parley: ParleySource) -> list[tuple[ServerKind, ParleySource]]:
    return [("baseline", base), ("parley", parley)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-rev", default=DEFAULT_BASELINE_REV)
    parser.add_argument("--streams", default="1,100", help="comma-separated concurrent streams per case")
    parser.add_argument(
        "--turns", type=int, default=0, help="counted turns per case (default: 20, or streams)"
    )
    parser.add_argument("--deltas", type=int, default=2000, help="deltas per turn")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    return parser.parse_args(argv)


def table(counts: list[Count]) -> list[str]:
    lines = [
        "| streams | counted | baseline instructions/delta | Parley instructions/delta | Parley ÷ baseline |",
        "|---|---|---|---|---|",
    ]
    for streams in sorted({c.streams for c in counts}):
        by = {c.server: c for c in counts if c.streams == streams}
        base, parley = by["baseline"], by["parley"]
        lines.append(
            f"| {streams} | {parley.turns} turns × {parley.deltas:,} deltas | {base.per_delta:,.0f} | "
            f"{parley.per_delta:,.0f} | {parley.per_delta / base.per_delta:.3f}× |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (with callgrind_control) is not installed", file=sys.stderr)
        return 2
    counts = []
    with tempfile.TemporaryDirectory(prefix="parley-instructions-") as scratch:
        base = export_revision(args.baseline_rev, Path(scratch) / "baseline-src")
        parley = ParleySource(None, "the working tree")
        for streams in (int(s) for s in args.streams.split(",")):
            turns = max(args.turns or max(20, streams), streams)
            turns -= turns % streams
            # both builds of a case at once, one core each: instruction counts do not mind the company
            with ThreadPoolExecutor(2) as pool:
                jobs = [
                    pool.submit(count, kind, source, streams, turns, args.deltas, Path(scratch))
                    for kind, source in builds(base, parley)
                ]
                for job in jobs:
                    counts.append(job.result())
                    c = counts[-1]
                    print(
                        f"{c.server:8} {streams:4} streams: {c.per_delta:,.0f} instructions a delta",
                        flush=True,
                    )
    print("\n".join(table(counts)))
    if args.json:
        args.json.write_text(json.dumps([{**asdict(c), "per_delta": c.per_delta} for c in counts], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
