"""Opaque page cursors: what the next page continues from, bound to the filters of the first page.

A cursor is URL-safe base64 of a small JSON object. Clients pass it back unchanged; anything that does not
decode, or that was made for other filters, is ``InvalidCursor``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

MAX_CURSOR_CHARS = 512
MAX_OFFSET = 10_000


class InvalidCursor(ValueError):
    """The cursor is malformed, or belongs to a listing with other filters."""


@dataclass(frozen=True)
class SessionCursor:
    """A session listing: its snapshot time and the (activity, id) of the last item already returned."""

    snapshot: datetime
    activity: datetime
    session_id: uuid.UUID


def fingerprint(filters: Any) -> str:
    """A short digest of the filters a listing was started with."""
    return hashlib.sha256(orjson.dumps(filters, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def encode_session_cursor(cursor: SessionCursor, filters: Any) -> str:
    return _pack(
        {
            "t": cursor.snapshot.isoformat(),
            "a": cursor.activity.isoformat(),
            "i": cursor.session_id.hex,
            "f": fingerprint(filters),
        }
    )


def decode_session_cursor(text: str, filters: Any) -> SessionCursor:
    data = _unpack(text, filters)
    try:
        return SessionCursor(_utc(data["t"]), _utc(data["a"]), uuid.UUID(data["i"]))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidCursor("The cursor is not valid.") from exc


def encode_offset_cursor(offset: int, filters: Any) -> str:
    return _pack({"o": offset, "f": fingerprint(filters)})


def decode_offset_cursor(text: str, filters: Any) -> int:
    offset = _unpack(text, filters).get("o")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET:
        raise InvalidCursor("The cursor is not valid.")
    return offset


def _pack(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


def _unpack(text: str, filters: Any) -> dict[str, Any]:
    if len(text) > MAX_CURSOR_CHARS:
        raise InvalidCursor("The cursor is not valid.")
    try:
        data = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("The cursor is not valid.") from exc
    if not isinstance(data, dict):
        raise InvalidCursor("The cursor is not valid.")
    if data.get("f") != fingerprint(filters):
        raise InvalidCursor("The cursor was made for other filters; send the same filters as the first page.")
    return data


def _utc(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError("not a timestamp")
    parsed = datetime.fromisoformat(value)
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
