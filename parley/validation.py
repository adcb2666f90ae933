"""Pydantic's validation errors as sentences a client can read, for the WebSocket and REST alike.

Each problem names the field as the client wrote it (``user_input.chat_history[0].content``,
``messages[3].tool_steps[0].calls[0].name``), never the value sent, and says what is wrong in plain
words. Pydantic's own steps in an error's location (the member of a union it tried:
``function-after[storable(), str]``, ``list[TextPart]``) are left out: when a value fits no member of a
union, the sentence says what the field accepts ("must be a string or a list of content parts"); when it
fits a member's shape but fails inside it, only that member's problems are told.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from parley.text import clean

SHOWN_PROBLEMS = 3  # more are counted, not listed
KEY_CHARS = 64  # a client's key longer than this is cut in the path
REASON_CHARS = 200

_REASONS = {
    "missing": "is required",
    "extra_forbidden": "is not a field here",
    # pydantic refuses a lone surrogate before our validators see it; the text policy's words for it
    # (parley/text.py, ``storable``)
    "string_unicode": "must be valid Unicode text (it holds a lone surrogate)",
}
# A value of the wrong type: what the field wanted.
_WANTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dataclass_type": "an object",
    "none_required": "null",
    "uuid_type": "a UUID",
    "uuid_parsing": "a UUID",
    "datetime_type": "a date and time (ISO 8601)",
    "datetime_parsing": "a date and time (ISO 8601)",
    "datetime_from_date_parsing": "a date and time (ISO 8601)",
}
_BOUNDS = {
    "greater_than": ("gt", "must be greater than {}"),
    "greater_than_equal": ("ge", "must be at least {}"),
    "less_than": ("lt", "must be less than {}"),
    "less_than_equal": ("le", "must be at most {}"),
}
# A union member's tag (pydantic's name for the type it tried) in plain words: (one, several).
_NOUNS = {
    "str": ("a string", "strings"),
    "int": ("an integer", "integers"),
    "float": ("a number", "numbers"),
    "bool": ("true or false", "booleans"),
    "none": ("null", "nulls"),
    "TextPart": ("a content part", "content parts"),
}
_WRAPPER = re.compile(r"^function-(?:after|before|wrap|plain)\[.*, (.+)\]$")
_SHOULD = re.compile(r"^(?:Input|Value|String|List|Dictionary|Tuple|Set|Object|Data) should ")


UNSEEN: Any = object()  # ``body`` when the value validated is not at hand: tags are told by their looks


def describe(
    problems: Sequence[Any], body: Any = UNSEEN, *, sources: Mapping[str, tuple[str, Any]] | None = None
) -> str:
    """The problems as plain sentences, ``; ``-joined: ``title: must not be blank.`` (at most
    ``SHOWN_PROBLEMS`` of them, the rest counted). ``body`` is what the client sent, to tell its keys
    from pydantic's steps. With ``sources`` (FastAPI's), a location's first step picks what it is in:
    ``{"body": ("", body), "query": ("query parameter ", UNSEEN)}``."""
    told = _merged([_located(error, body, sources) for error in problems])
    lines = [problem.sentence() for problem in told[:SHOWN_PROBLEMS]]
    hidden = len(told) - len(lines)
    more = f" (and {hidden} more problem{'s' if hidden > 1 else ''})" if hidden > 0 else ""
    return "; ".join(lines) + more + "."


@dataclass
class Problem:
    path: str  # as the client wrote it; "" for the whole value
    reason: str
    kind: str = ""
    union: str | None = None  # the path of the union whose member this problem is in
    member: str = ""  # that member's tag
    inside: bool = False  # the value fit the member's shape and failed further in
    label: str = ""  # where the path is: "" (the body), "query parameter ", …

    def sentence(self) -> str:
        if self.kind == "json_invalid":
            return f"the body is not valid JSON ({self.reason})"
        return f"{self.label}{self.path or ('' if self.label else 'the body')}: {self.reason}"


def _located(error: Any, body: Any, sources: Mapping[str, tuple[str, Any]] | None) -> Problem:
    kind = str(error.get("type", ""))
    loc: Sequence[Any] = tuple(error.get("loc") or ())
    problem = Problem("", _reason(error, kind), kind)
    node, known = body, True
    if sources is not None:
        problem.label, node = sources.get(str(loc[0]), ("", UNSEEN)) if loc else ("", body)
        loc = loc[1:]
    for step, part in enumerate(loc):
        last = step == len(loc) - 1
        if part == "[key]":  # a dict's key, not its value, failed: the path is the key's already
            continue
        if node is UNSEEN and (isinstance(part, int) or not _looks_like_tag(str(part))):
            problem.path = _joined(problem.path, part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            problem.path, node = f"{problem.path}[{part}]", node[part]
        elif isinstance(node, dict) and part in node:
            problem.path, node = _joined(problem.path, part), node[part]
        elif kind == "missing" and last:
            problem.path = _joined(problem.path, part)
        elif problem.union is None and isinstance(part, str):  # a union member's tag
            problem.union, problem.member = problem.path, part
            continue
        else:
            known = False
        if problem.union is not None:
            problem.inside = True
    if not known:
        problem.inside = True
    return problem


def _merged(problems: list[Problem]) -> list[Problem]:
    """One problem per union the value fit no member of; the members' own problems where it fit one."""
    told: list[Problem] = []
    unions: dict[str, list[Problem]] = {}
    for problem in problems:
        if problem.union is None:
            told.append(problem)
        else:
            if problem.union not in unions:
                told.append(problem)  # its place in the list, filled below
            unions.setdefault(problem.union, []).append(problem)
    result: list[Problem] = []
    for problem in told:
        if problem.union is None:
            result.append(problem)
            continue
        members = unions[problem.union]
        fitting = [p for p in members if p.inside or p.kind not in _WANTED]
        if fitting:
            result.extend(fitting)
        else:
            tags = list(dict.fromkeys(p.member for p in members))
            result.append(Problem(problem.path, "must be " + _either([_noun(t)[0] for t in tags])))
    return result


def _reason(error: Any, kind: str) -> str:
    ctx = error.get("ctx") or {}
    if kind in _REASONS:
        return _REASONS[kind]
    if kind == "json_invalid":
        return _short(str(ctx.get("error") or "it cannot be parsed"))
    if kind in _WANTED:
        return f"must be {_WANTED[kind]}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        many = len(re.findall(r"'[^']*'", expected)) > 2  # "'a' or 'b'" reads well as it is
        return f"must be {'one of ' if many else ''}{_short(expected)}"
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, sentence = _BOUNDS[kind]
        return sentence.format(_number(ctx[key]))
    if kind in ("too_long", "too_short") and ("max_length" in ctx or "min_length" in ctx):
        most = kind == "too_long"
        limit = int(ctx["max_length" if most else "min_length"])
        return f"must have at {'most' if most else 'least'} {limit} item{'s' if limit != 1 else ''}"
    if kind in ("string_too_long", "string_too_short"):
        most = kind == "string_too_long"
        limit = int(ctx.get("max_length" if most else "min_length", 0))
        return f"must be at {'most' if most else 'least'} {limit} character{'s' if limit != 1 else ''}"
    message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
    return _short(_SHOULD.sub("must ", message))


def _looks_like_tag(part: str) -> bool:
    return part in _NOUNS or part[:1].isupper() or any(c in part for c in "[(-")


def _noun(tag: str) -> tuple[str, str]:
    while (wrapped := _WRAPPER.match(tag)) is not None:
        tag = wrapped.group(1)
    if tag in _NOUNS:
        return _NOUNS[tag]
    if tag.startswith(("list[", "tuple[", "set[")) and tag.endswith("]"):
        return ("a list of " + _noun(tag[tag.index("[") + 1 : -1])[1], "lists")
    if tag.startswith("dict[") or tag[:1].isupper():
        return ("an object", "objects")
    if tag.startswith("literal["):
        return ("one of " + tag[len("literal[") : -1], "those values")
    return ("a valid value", "valid values")


def _either(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _joined(path: str, key: Any) -> str:
    """``path.key``, or ``path["odd key"]`` for a key that is not a plain name; keys are cut and made
    sendable (NUL and lone surrogates replaced, controls escaped by the quoting)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = clean(str(key))[:KEY_CHARS]
    if text.isidentifier():
        return f"{path}.{text}" if path else text
    return f"{path}[{json.dumps(text, ensure_ascii=False)}]"


def _short(text: str) -> str:
    text = clean(" ".join(text.split()))
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"
