"""The one text policy: what happens to NUL characters and lone surrogates, from a model and from a client.

Neither can travel everywhere: PostgreSQL refuses NUL in text columns, and a lone surrogate (a UTF-16 half
with no partner, which JSON's ``\\ud800`` escapes can carry into a Python string) cannot be encoded as
UTF-8, so neither orjson nor a database driver takes it.

- **From a model** (text, reasoning, tool calls and their results): each becomes U+FFFD (the replacement
  character), the same on the wire and in the store, so what was sent is what is stored.
- **From a client**: refused with ``invalid_request``, naming the field, before anything is stored. A lone
  surrogate is refused anywhere in a chat request (it could be neither echoed nor stored); NUL wherever the
  text is stored or echoed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
# request_id and identities: printable text only (a newline in one would forge a log line).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


# -- from a model --------------------------------------------------------------------------------------


def clean(text: str) -> str:
    """Model text every database and JSON encoder takes: NUL and lone surrogates become U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    if has_surrogate(text):
        text = _SURROGATE.sub(REPLACEMENT, text)
    return text


def clean_json(value: Any) -> Any:
    """A decoded JSON value with every string (keys too) passed through ``clean``."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, Mapping):
        return {clean(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def encoded(text: str) -> tuple[str, str]:
    """``(clean(text), its JSON string)``: the hot path encodes first and cleans only when that fails, so
    clean text costs one ``in`` scan beyond the encoding it needs anyway."""
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    try:
        return text, orjson.dumps(text).decode()
    except orjson.JSONEncodeError:
        text = _SURROGATE.sub(REPLACEMENT, text)
        return text, orjson.dumps(text).decode()


def has_surrogate(text: str) -> bool:
    """True when ``text`` holds a lone surrogate (one that UTF-8 cannot encode)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# -- from a client -------------------------------------------------------------------------------------


def storable(value: str) -> str:
    """A pydantic validator for client text that is stored: no NUL, valid Unicode."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    if has_surrogate(value):
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)")
    return value


StoredText = Annotated[str, AfterValidator(storable)]


def first_surrogate(value: Any, where: str = "") -> str | None:
    """Where in a decoded JSON value the first lone surrogate is (``user_input.prompt[0].text``), or None."""
    if isinstance(value, str):
        return (where or "the frame") if has_surrogate(value) else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if has_surrogate(str(key)):
                return f"a key in {where or 'the frame'}"
            found = first_surrogate(item, path)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = first_surrogate(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


def identifier_problem(value: str, limit: int) -> str | None:
    """Why ``value`` cannot be an id we echo and store (``request_id``, a customer id), or None."""
    if len(value) > limit:
        return f"must be at most {limit} characters (it has {len(value)})"
    if _CONTROL.search(value) is not None:
        return "must not contain control characters"
    if has_surrogate(value):
        return "must be valid Unicode text (it holds a lone surrogate)"
    return None
