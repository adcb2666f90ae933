"""The message tree's rules, without a database: paths, siblings, newest-child leaves, subtrees, placement."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from parley.errors import ValidationFailed
from parley.store.branches import ContextMessage, place
from parley.store.pagination import (
    InvalidCursor,
    SessionCursor,
    decode_offset_cursor,
    decode_session_cursor,
    encode_offset_cursor,
    encode_session_cursor,
)
from parley.store.tables import Message, utcnow
from parley.store.tree import Tree

START = utcnow()


def msg(name: str, parent: Message | None, minute: int, role: str = "user") -> Message:
    return Message(
        id=uuid.uuid5(uuid.NAMESPACE_DNS, name),
        parent_id=parent.id if parent else None,
        role=role,
        content=name,
        created_at=START + timedelta(minutes=minute),
    )


@pytest.fixture
def rows() -> dict[str, Message]:
    """q1 ─ a1 ─┬─ q2 ─ a2
    └─ q2b ─┬─ a2b
            └─ a2c   (q0 is a second root, older than q1)"""
    found: dict[str, Message] = {}
    found["q0"] = msg("q0", None, 0)
    found["q1"] = msg("q1", None, 1)
    found["a1"] = msg("a1", found["q1"], 2, "assistant")
    found["q2"] = msg("q2", found["a1"], 3)
    found["a2"] = msg("a2", found["q2"], 4, "assistant")
    found["q2b"] = msg("q2b", found["a1"], 5)
    found["a2b"] = msg("a2b", found["q2b"], 6, "assistant")
    found["a2c"] = msg("a2c", found["q2b"], 7, "assistant")
    return found


def names(rows: dict[str, Message], ids: list[uuid.UUID]) -> list[str]:
    by_id = {m.id: name for name, m in rows.items()}
    return [by_id[i] for i in ids]


def test_paths_siblings_and_leaves(rows: dict[str, Message]) -> None:
    tree = Tree.of(reversed(list(rows.values())))  # input order does not matter
    assert names(rows, tree.path_to(rows["a2b"].id)) == ["q1", "a1", "q2b", "a2b"]
    assert names(rows, tree.siblings(rows["q2b"].id)) == ["q2", "q2b"]
    assert names(rows, tree.siblings(rows["q1"].id)) == ["q0", "q1"]
    assert names(rows, [tree.deepest(rows["a1"].id) or uuid.uuid4()]) == ["a2c"]
    assert names(rows, [tree.deepest(None) or uuid.uuid4()]) == ["a2c"]
    assert names(rows, sorted(tree.subtree(rows["q2b"].id))) == names(
        rows, sorted([rows[n].id for n in ("q2b", "a2b", "a2c")])
    )
    assert names(rows, tree.active_path(None)) == ["q1", "a1", "q2b", "a2c"]  # no leaf: the newest
    assert names(rows, tree.active_path(uuid.uuid4())) == ["q1", "a1", "q2b", "a2c"]


def test_cycles_and_missing_parents_end(rows: dict[str, Message]) -> None:
    rows["q1"].parent_id = rows["a2"].id  # a cycle q1 → a1 → q2 → a2 → q1
    tree = Tree.of(rows.values())
    assert len(tree.path_to(rows["a2"].id)) <= len(rows)
    assert tree.deepest(rows["q2"].id) is not None
    orphan = msg("orphan", msg("gone", None, 0), 9)
    assert Tree.of([orphan]).path_to(orphan.id) == [orphan.id]  # a deleted parent makes a root


def test_place_edit_regenerate_and_continue(rows: dict[str, Message]) -> None:
    every = list(rows.values())
    normal = place(every, rows["a2"].id, "next")
    assert normal.parent == rows["a2"].id and normal.prompt == "next" and normal.question is None
    assert [m.content for m in normal.history] == ["q1", "a1", "q2", "a2"]
    edit = place(every, rows["a2"].id, "new q2", edit_of=str(rows["q2b"].id))
    assert edit.parent == rows["a1"].id and edit.history == [
        ContextMessage("user", "q1"),
        ContextMessage("assistant", "a1"),
    ]
    again = place(every, None, "", regenerate=str(rows["a2b"].id))
    assert (again.parent, again.question, again.prompt) == (rows["q2b"].id, rows["q2b"].id, "q2b")
    assert [m.content for m in again.history] == ["q1", "a1"]
    with pytest.raises(ValidationFailed) as wrong_role:
        place(every, None, "x", edit_of=str(rows["a1"].id))
    assert wrong_role.value.code == "invalid_request"
    for bad in ("nope", str(uuid.uuid4()), ""):
        with pytest.raises(ValidationFailed) as missing:
            place(every, None, "x", regenerate=bad or "0")
        assert missing.value.code == "message_not_found"


def test_cursors_round_trip_and_refuse_tampering() -> None:
    cursor = SessionCursor(START, START - timedelta(days=1), uuid.uuid4())
    text = encode_session_cursor(cursor, ["q", None])
    assert decode_session_cursor(text, ["q", None]) == cursor
    assert decode_offset_cursor(encode_offset_cursor(40, ["x"]), ["x"]) == 40
    for bad, filters in [(text, ["other", None]), (text[:-4], ["q", None]), ("!!", []), ("é", [])]:
        with pytest.raises(InvalidCursor):
            decode_session_cursor(bad, filters)
    with pytest.raises(InvalidCursor):
        decode_offset_cursor(encode_offset_cursor(10**6, ["x"]), ["x"])
