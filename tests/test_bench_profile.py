"""``--profile`` (bench/profiling.py): py-spy's collapsed stacks summed up, and the report's Profile section.

No real py-spy runs here (CI has none): the parser gets synthetic stacks, and ``Recording`` gets a stand-in
script that answers like py-spy does.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bench.drivers import Recorder, Window
from bench.harness import RunRecord
from bench.loadgen import Progress
from bench.profiling import (
    EVENT_LOOP,
    PROFILE_DIR,
    Frame,
    ProfileSetup,
    Recording,
    bucket,
    case_slug,
    py_spy_notes,
    summarize,
)
from bench.report import PROFILE_MARK, render, section_profile
from bench.results import Results
from bench.run import profile_setup, profiler_cores

RUNPY = "_run_module_as_main (<frozen runpy>:198);Runner.run (asyncio/runners.py:118)"
BOOT = "Thread._bootstrap (threading.py:1002);Thread._bootstrap_inner (threading.py:1045)"
STACKS = f"""
{RUNPY};Turn.run (parley/turn.py:10);Turn._send (parley/turn.py:20);encode (parley/protocol.py:5) 3
{RUNPY};Turn.run (parley/turn.py:12);Turn._send (parley/turn.py:21) 2
{RUNPY} 4
{RUNPY};walk (parley/store/tree.py:5);walk (parley/store/tree.py:7);walk (parley/store/tree.py:7) 1
{BOOT};Connection.run (aiosqlite/core.py:100);Connection.execute (sqlalchemy/engine/base.py:1494) 1
{BOOT};Connection.run (aiosqlite/core.py:101);_execute (aiosqlite/core.py:50) 2
"""
WORKER = "worker thread: Connection.run (aiosqlite/core.py)"


def rows(summary: dict[str, Any], key: str) -> dict[Any, int]:
    """A summary's ranked list as {name (or (module, function)): samples}."""
    return {tuple(row[:-1]) if len(row) > 2 else row[0]: row[-1] for row in summary[key]}


def test_summary_buckets_the_leaf_frames_and_tells_the_threads_apart() -> None:
    summary = summarize(STACKS.splitlines())

    assert summary["samples"] == 13
    assert rows(summary, "buckets") == {
        EVENT_LOOP: 4,
        "parley/protocol.py": 3,
        "parley/turn.py": 2,
        "aiosqlite / sqlite3": 2,
        "parley/store/tree.py": 1,
        "sqlalchemy": 1,
    }
    assert rows(summary, "threads") == {"main thread": 10, WORKER: 3}
    assert summary["entered"] == {
        "main thread": "Runner.run (asyncio/runners.py)",
        WORKER: "Connection.run (aiosqlite/core.py)",
    }
    assert summary["partial"] == 0


def test_inclusive_merges_lines_counts_recursion_once_and_leaves_out_entry_frames() -> None:
    summary = summarize(STACKS.splitlines())

    assert rows(summary, "inclusive") == {
        ("parley/turn.py", "Turn.run"): 5,  # lines 10 and 12: one function
        ("parley/turn.py", "Turn._send"): 5,
        ("parley/protocol.py", "encode"): 3,
        ("aiosqlite/core.py", "_execute"): 2,
        ("parley/store/tree.py", "walk"): 1,  # three frames deep in one sample: once
        ("sqlalchemy/engine/base.py", "Connection.execute"): 1,
    }
    assert rows(summary, "own") == {
        ("asyncio/runners.py", "Runner.run"): 4,
        ("parley/protocol.py", "encode"): 3,
        ("aiosqlite/core.py", "_execute"): 2,
        ("parley/turn.py", "Turn._send"): 2,
        ("parley/store/tree.py", "walk"): 1,
        ("sqlalchemy/engine/base.py", "Connection.execute"): 1,
    }
    assert summary["own"][0] == ["asyncio/runners.py", "Runner.run", 4]  # biggest first


def test_thread_names_from_py_spy_are_used_and_partial_stacks_counted() -> None:
    main = "thread (0x7F01): MainThread"
    lines = [
        f"{main};{RUNPY};Turn.run (parley/turn.py:10) 2",
        f"{main};{RUNPY} 5",
        f"{main};Turn.run (parley/turn.py:10) 1",  # read as it changed: no root
        f'process 42:"python -m parley serve";thread (123): parley-sqlite-writer;{BOOT} 2',
        f"{main} 3",  # no frames at all: nothing to count
        "",
        "not a stack",
    ]
    summary = summarize(lines)

    assert summary["samples"] == 10
    assert rows(summary, "threads") == {"MainThread": 8, "parley-sqlite-writer": 2}
    assert summary["partial"] == 1
    assert rows(summary, "inclusive") == {("parley/turn.py", "Turn.run"): 3}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/usr/lib/python3.11/asyncio/base_events.py", EVENT_LOOP),
        ("uvloop/__init__.py", EVENT_LOOP),
        ("/x/.venv/lib/python3.11/site-packages/sqlalchemy/ext/asyncio/session.py", "sqlalchemy"),
        ("sqlalchemy/dialects/sqlite/aiosqlite.py", "sqlalchemy"),
        ("/home/parley/.venv/lib/python3.11/site-packages/uvicorn/server.py", "uvicorn"),
        ("/work/main/parley/store/writer.py", "parley/store/writer.py"),
        ("parley/turn.py", "parley/turn.py"),
        ("pydantic_core/core_schema.py", "pydantic"),
        ("fastapi/routing.py", "starlette / fastapi"),
        ("json/encoder.py", "orjson / json"),
        ("sqlite3/dbapi2.py", "aiosqlite / sqlite3"),
        ("threading.py", "threading (worker threads)"),
        ("concurrent/futures/thread.py", "threading (worker threads)"),
        ("<frozen runpy>", "other"),
        ("logging/__init__.py", "other"),
    ],
)
def test_bucket_is_the_leaf_files_top_level_package(path: str, expected: str) -> None:
    assert bucket(Frame("f", path)) == expected


def test_py_spy_notes_keep_warnings_and_failed_reads_only() -> None:
    said = """py-spy> Sampling process 250 times a second for 2 seconds. Press Control-C to exit.
py-spy> 1.20s behind in sampling, results may be inaccurate. Try reducing the sampling rate
py-spy> 1.20s behind in sampling, results may be inaccurate. Try reducing the sampling rate
py-spy> Wrote raw flamegraph data to 'x.txt'. Samples: 318 Errors: 12
py-spy> You can use the flamegraph.pl script from https://github.com/brendangregg/flamegraph"""
    assert py_spy_notes(said) == [
        "1.20s behind in sampling, results may be inaccurate. Try reducing the sampling rate",
        "12 samples could not be read",
    ]
    assert py_spy_notes(said.replace("Errors: 12", "Errors: 0")) == py_spy_notes(said)[:1]


def test_the_generator_says_when_the_window_opens_and_how_long_it_lasts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Progress(Recorder(Window())).open_window("measure", 2.5)
    line = json.loads(capsys.readouterr().err)
    assert line["phase"] == "measure"
    assert line["window_s"] == 2.5


def test_py_spy_gets_a_spare_core_else_the_generators_never_the_servers() -> None:
    assert profiler_cores({0, 1, 2, 3}, {0}, {1}) == {2}
    assert profiler_cores({0, 1}, {0}, {1}) == {1}


def test_profile_setup_empties_old_profiles_and_goes_on_without_py_spy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / PROFILE_DIR / "single-200-deltas.txt"
    old.parent.mkdir()
    old.write_text("an earlier run's")
    monkeypatch.setattr("bench.run.find_py_spy", lambda: fake_py_spy(tmp_path, "echo py-spy 0.4.3").py_spy)
    setup, meta = profile_setup(tmp_path, {1})
    assert setup is not None
    assert setup.cores == {1}
    assert meta == {"py_spy": "py-spy 0.4.3", "rate_hz": 50, "cores": [1]}
    assert not old.exists()

    monkeypatch.setattr("bench.run.find_py_spy", lambda: None)
    setup, meta = profile_setup(tmp_path, {1})
    assert setup is None
    assert meta["py_spy"] is None
    assert "py-spy is not installed" in meta["problem"]


# -- Recording, with a stand-in for py-spy --------------------------------------------------------------


def fake_py_spy(tmp_path: Path, body: str) -> ProfileSetup:
    """An executable that takes py-spy's arguments; ``body`` is shell with ``$out`` set to --output."""
    script = tmp_path / "py-spy"
    script.write_text(
        '#!/bin/sh\nwhile [ "$#" -gt 0 ]; do [ "$1" = --output ] && out=$2; shift; done\n' + body + "\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    directory = tmp_path / PROFILE_DIR
    directory.mkdir(exist_ok=True)
    return ProfileSetup(script, directory, set())


async def test_recording_summarises_what_py_spy_wrote(tmp_path: Path) -> None:
    stacks = STACKS.strip().replace("\n", "\\n")
    body = f"""printf '{stacks}\\n' > "$out"
echo "py-spy> Wrote raw flamegraph data to '$out'. Samples: 13 Errors: 2"
"""
    setup = fake_py_spy(tmp_path, body)
    recording = Recording(setup, os.getpid(), case_slug("persist-sqlite", "10 connections"))
    await recording.start(1.2)
    profile = await recording.finish()

    assert "error" not in profile, profile["error"]
    assert profile["file"] == f"{PROFILE_DIR}/persist-sqlite-10-connections.txt"
    assert profile["duration_s"] == 2  # the window, rounded up
    assert profile["samples"] == 13
    assert profile["notes"] == ["2 samples could not be read"]


async def test_a_failing_py_spy_is_reported_not_raised(tmp_path: Path) -> None:
    setup = fake_py_spy(tmp_path, 'echo "Error: Operation not permitted (os error 1)"; exit 1')
    recording = Recording(setup, os.getpid(), "single-20-deltas")
    await recording.start(1.0)
    profile = await recording.finish()
    assert "exited with 1" in profile["error"]
    assert "Operation not permitted" in profile["error"]


async def test_a_window_that_never_opened_is_reported(tmp_path: Path) -> None:
    recording = Recording(fake_py_spy(tmp_path, "exit 0"), os.getpid(), "idle-300-connections")
    assert "never started" in (await recording.finish())["error"]


# -- the report's Profile section ---------------------------------------------------------------------


def profiled_record(profile: dict[str, Any]) -> RunRecord:
    return RunRecord("single", "20 deltas", 20, "parley", "sqlite", profile=profile)


SETUP = {"py_spy": "py-spy 0.4.3", "rate_hz": 250, "cores": [1]}


def test_report_without_profile_keeps_the_placeholder_and_says_how() -> None:
    report = render([profiled_record({})], {}, {"scenarios": {}}, [])
    profile = report.split("## Profile", 1)[1].split("\n## ", 1)[0]
    assert PROFILE_MARK in profile
    assert "`--profile`" in profile


def test_report_with_profile_replaces_the_placeholder() -> None:
    summary = {"file": f"{PROFILE_DIR}/single-20-deltas.txt", "duration_s": 2, "rate_hz": 250, "notes": []}
    summary |= summarize(STACKS.splitlines())
    report = render([profiled_record(summary)], {}, {"scenarios": {}, "profile": SETUP}, [])
    profile = report.split("## Profile", 1)[1].split("\n## ", 1)[0]

    assert PROFILE_MARK not in report
    assert "py-spy 0.4.3 sampled the Parley server 250 times a second" in profile
    assert "| single · 20 deltas | 13 |" in profile  # the overview row
    assert "### single · 20 deltas" in profile
    assert f"`{PROFILE_DIR}/single-20-deltas.txt`" in profile
    assert f"main thread 76.9% (in `Runner.run (asyncio/runners.py)`), {WORKER} 23.1%." in profile
    assert f"| {EVENT_LOOP} | 30.8% |" in profile
    assert "| 1 | `Turn._send` turn.py | 38.5% | `Runner.run` runners.py | 30.8% |" in profile


def test_report_says_why_nothing_was_profiled() -> None:
    failed = profiled_record({"error": "py-spy exited with 1: Operation not permitted"})
    section = "\n".join(section_profile(Results([failed]), {"profile": SETUP}))
    assert "No profile: py-spy exited with 1: Operation not permitted" in section

    missing = {"profile": {"py_spy": None, "problem": "py-spy is not installed"}}
    section = "\n".join(section_profile(Results([]), missing))
    assert "`--profile` was given, but nothing was sampled: py-spy is not installed." in section
