"""Where a turn's messages go in the session tree, and what the model sees: the branch rules of a turn.

A normal turn continues the session's active leaf. ``edit_of`` makes the new prompt a sibling of an earlier
user message; ``regenerate`` adds a new answer beside an earlier one (to the same stored question). The
model's context is always the path from the root to the new message's parent, never another branch.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from parley.errors import MessageNotFound, ValidationFailed
from parley.store.tables import Message
from parley.store.tree import Tree


@dataclass(frozen=True)
class ContextMessage:
    """A stored message as a turn's context needs it; an agentic answer's ``tool_steps`` as stored."""

    role: str
    content: str
    tool_steps: Any = None


@dataclass(frozen=True)
class Placement:
    """The new question's parent, the history before it, the prompt, and the question being reused."""

    parent: uuid.UUID | None
    history: list[ContextMessage]
    prompt: str
    question: uuid.UUID | None = None  # set when regenerating: no new user message is stored


def check_branch_request(session_id: uuid.UUID | None, edit_of: str | None, regenerate: str | None) -> None:
    if edit_of and regenerate:
        raise ValidationFailed("Send either user_input.edit_of or user_input.regenerate, not both.")
    if (edit_of or regenerate) and session_id is None:
        field = "edit_of" if edit_of else "regenerate"
        raise ValidationFailed(f"user_input.{field} needs the session_id of that message's session.")


def place(
    rows: Sequence[Message],
    active_leaf: uuid.UUID | None,
    prompt: str,
    edit_of: str | None = None,
    regenerate: str | None = None,
) -> Placement:
    """Decide where the turn goes. Raises ``ValidationFailed`` for a message not in this session."""
    tree = Tree.of(rows)
    if edit_of:
        target = _find(tree, edit_of, "edit_of")
        if target.role != "user":
            raise ValidationFailed("user_input.edit_of must name a user message.")
        parent = tree.parent(target.id)
        return Placement(parent, history(tree, parent), prompt)
    if regenerate:
        target = _find(tree, regenerate, "regenerate")
        question = target.id if target.role == "user" else tree.parent(target.id)
        asked = tree.nodes.get(question) if question is not None else None
        if asked is None or asked.role != "user":
            raise ValidationFailed("user_input.regenerate must name an answer to a user message.")
        return Placement(asked.id, history(tree, tree.parent(asked.id)), asked.content, asked.id)
    leaf = active_leaf if active_leaf in tree.nodes else tree.newest()
    return Placement(leaf, history(tree, leaf), prompt)


def history(tree: Tree, upto: uuid.UUID | None) -> list[ContextMessage]:
    """The non-empty messages on the path from the root to ``upto``, oldest first (an answer that only
    called tools is not empty: its calls and results are context)."""
    messages = (tree.nodes[i] for i in tree.path_to(upto))
    return [ContextMessage(m.role, m.content, m.tool_steps) for m in messages if m.content or m.tool_steps]


def _find(tree: Tree, message_id: str, field: str) -> Message:
    try:
        found = tree.nodes.get(uuid.UUID(message_id))
    except ValueError:
        found = None
    if found is not None:
        return found
    raise MessageNotFound(f"user_input.{field}")
