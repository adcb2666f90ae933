"""A batch of a turn's events as one stream entry, and what an answer's events say it is."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import orjson

from parley.protocol import Kind
from parley.streams import LiveAnswer

_BIG_ENDIAN = sys.byteorder == "big"


def pack(bodies: list[str]) -> tuple[str, bytes]:
    """Bodies as one string and their end offsets (little-endian uint32)."""
    ends = array("I", accumulate(map(len, bodies)))
    if _BIG_ENDIAN:
        ends.byteswap()
    return "".join(bodies), ends.tobytes()


@dataclass(frozen=True)
class Batch:
    """One stream entry, read back: events ``first`` on, and the session they carry from ``session_seq``."""

    first: int
    kinds: bytes
    ends: array[int]
    joined: str
    session: str | None
    session_seq: int

    @classmethod
    def of(cls, fields: dict[bytes, bytes]) -> Batch:
        ends = array("I")
        ends.frombytes(fields[b"e"])
        if _BIG_ENDIAN:
            ends.byteswap()
        session = fields.get(b"s")
        return cls(
            int(fields[b"f"]),
            fields[b"k"],
            ends,
            fields[b"b"].decode(),
            session.decode() if session else None,
            int(fields.get(b"ss", b"0")),
        )

    def events(self) -> list[tuple[int, int, str]]:
        """(seq, kind, body) of each event."""
        out = []
        start = 0
        for index, end in enumerate(self.ends):
            out.append((self.first + index, self.kinds[index], self.joined[start:end]))
            start = end
        return out


def content_of(body: str) -> Any:
    return orjson.loads("{" + body + "}").get("content")


def rebuild(events: Sequence[tuple[int, int, str]], seq: int) -> LiveAnswer:
    """An answer as its events say it: the text and reasoning deltas, and the tool steps."""
    text: list[str] = []
    reasoning: list[str] = []
    steps: list[dict[str, Any]] = []
    step_text: list[str] = []
    for _, kind, body in events:
        if kind == Kind.TEXT:
            delta = content_of(body)
            text.append(delta)
            step_text.append(delta)
        elif kind == Kind.REASONING:
            reasoning.append(content_of(body))
        elif kind == Kind.TOOL_USE:
            call = content_of(body)
            if not steps or steps[-1]["results"]:
                steps.append({"text": "".join(step_text), "calls": [], "results": []})
                step_text = []
            steps[-1]["calls"].append({"id": call["call_id"], "name": call["name"], "input": call["input"]})
        elif kind == Kind.TOOL_RESULT and steps:
            steps[-1]["results"].append(content_of(body))
    return LiveAnswer("".join(text), "".join(reasoning) if reasoning else None, steps or None, seq)


class Closing:
    """An ``EventLog`` that only collects: the closing events recovery appends for a dead owner."""

    def __init__(self, next_seq: int) -> None:
        self.first = next_seq
        self.kinds = bytearray()
        self.bodies: list[str] = []

    def append(self, kind: int, body: str, urgent: bool = False) -> int:
        self.kinds.append(kind)
        self.bodies.append(body)
        return self.first + len(self.bodies) - 1

    def set_session(self, session_id: str) -> None:
        pass
