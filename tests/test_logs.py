"""The log formatters: a client's string cannot forge a line or make a huge one; the turn rides along."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from parley import logs
from parley.config import Settings

FORGED = "2026-01-01 00:00:00,000 ERROR parley.app: forged"


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    made = logging.LogRecord("parley.test", logging.INFO, __file__, 1, msg, args, info)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


@pytest.mark.parametrize("formatter", [logs.TextFormatter(), logs.JsonFormatter()], ids=["text", "json"])
def test_a_newline_in_a_client_string_stays_inside_its_record(formatter: logging.Formatter) -> None:
    line = formatter.format(record("turn %s failed", "abc\n" + FORGED + "\r\u2028x"))
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert FORGED in line
    if isinstance(formatter, logs.JsonFormatter):
        assert json.loads(line)["msg"] == "turn abc\n" + FORGED + "\r\u2028x failed"


@pytest.mark.parametrize("formatter", [logs.TextFormatter(), logs.JsonFormatter()], ids=["text", "json"])
def test_a_200_kb_client_string_makes_no_200_kb_line(formatter: logging.Formatter) -> None:
    huge = "r" * 200_000
    line = formatter.format(record("turn %s: %s", huge, huge, request_id=huge))
    assert len(line) < logs.MAX_ARG_CHARS * 2 + 1000
    assert "[200000 chars]" in line


def test_a_long_message_is_cut_too() -> None:
    line = logs.JsonFormatter().format(record("x" * 100_000))
    assert len(json.loads(line)["msg"]) < logs.MAX_MESSAGE_CHARS + 50


def test_json_has_the_fields_and_the_turn_from_context() -> None:
    with logs.turn_context("req-1"):
        logs.SESSION_ID.set("sess-1")
        entry = json.loads(logs.JsonFormatter().format(record("hello %d", 3, exc=True)))
    assert entry["msg"] == "hello 3"
    assert (entry["level"], entry["logger"]) == ("INFO", "parley.test")
    assert (entry["request_id"], entry["session_id"]) == ("req-1", "sess-1")
    assert entry["ts"].endswith("+00:00") and "T" in entry["ts"]
    assert "ValueError: boom" in entry["exc"]
    outside = json.loads(logs.JsonFormatter().format(record("later")))
    assert "request_id" not in outside and "session_id" not in outside


def test_extra_names_the_turn_outside_one() -> None:
    line = logs.TextFormatter().format(record("resumed", request_id="r\n2"))
    assert line.endswith("resumed [request_id=r\\n2]")


def test_the_config_gives_uvicorn_our_handler() -> None:
    config = logs.log_config(Settings(log_format="json", log_level="warning"))
    assert config["root"] == {"handlers": ["default"], "level": "WARNING"}
    assert config["handlers"]["default"]["formatter"] == "json"
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert config["loggers"][name] == {"handlers": [], "level": "WARNING", "propagate": True}


def test_a_traceback_the_code_logs_as_its_message_keeps_its_lines() -> None:
    line = logs.TextFormatter().format(record("Traceback (most recent call last):\n  File 'x'\nValueError"))
    assert line.endswith("Traceback (most recent call last):\n  File 'x'\nValueError")
