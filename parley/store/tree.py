"""A session's messages as a tree through ``parent_id``: paths, siblings, subtrees and leaves.

Pure functions over loaded rows, so the branch rules are easy to read and to test. Children are
ordered oldest first (``created_at``, then id); "newest child" is the last of them.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from parley.store.tables import Message


@dataclass
class Tree:
    """The messages of one session, indexed by id and by parent (``None`` holds the roots)."""

    nodes: dict[uuid.UUID, Message]
    children: dict[uuid.UUID | None, list[uuid.UUID]]

    @classmethod
    def of(cls, rows: Iterable[Message]) -> Tree:
        ordered = sorted(rows, key=lambda n: (n.created_at, str(n.id)))
        nodes = {n.id: n for n in ordered}
        children: dict[uuid.UUID | None, list[uuid.UUID]] = defaultdict(list)
        for node in ordered:
            # A parent outside the session (or deleted) makes the node a root rather than an orphan.
            parent = node.parent_id if node.parent_id in nodes else None
            children[parent].append(node.id)
        return cls(nodes, children)

    def parent(self, node_id: uuid.UUID) -> uuid.UUID | None:
        parent = self.nodes[node_id].parent_id
        return parent if parent in self.nodes else None

    def path_to(self, leaf: uuid.UUID | None) -> list[uuid.UUID]:
        """Ids from the root down to ``leaf`` (empty for None or an unknown id)."""
        path: list[uuid.UUID] = []
        seen: set[uuid.UUID] = set()
        current = leaf if leaf in self.nodes else None
        while current is not None and current not in seen:  # a cycle cannot loop forever
            seen.add(current)
            path.append(current)
            current = self.parent(current)
        path.reverse()
        return path

    def siblings(self, node_id: uuid.UUID) -> list[uuid.UUID]:
        """The node and the other children of its parent, oldest first."""
        return list(self.children.get(self.parent(node_id), []))

    def deepest(self, start: uuid.UUID | None) -> uuid.UUID | None:
        """From ``start`` follow the newest child down to a leaf; from None, start at the newest root."""
        current = start if start in self.nodes else None
        if current is None:
            roots = self.children.get(None)
            if not roots:
                return None
            current = roots[-1]
        seen = {current}
        while (kids := self.children.get(current)) and kids[-1] not in seen:
            current = kids[-1]
            seen.add(current)
        return current

    def newest(self) -> uuid.UUID | None:
        """The most recently created message: the active leaf of a session that never recorded one."""
        return max(self.nodes.values(), key=lambda n: (n.created_at, str(n.id))).id if self.nodes else None

    def active_path(self, active_leaf: uuid.UUID | None) -> list[uuid.UUID]:
        return self.path_to(active_leaf if active_leaf in self.nodes else self.newest())

    def subtree(self, root: uuid.UUID) -> list[uuid.UUID]:
        """``root`` and every message below it."""
        found: list[uuid.UUID] = []
        stack = [root]
        seen: set[uuid.UUID] = set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            found.append(current)
            stack.extend(self.children.get(current, []))
        return found


def ordered(rows: Sequence[Message], ids: Sequence[uuid.UUID]) -> list[Message]:
    """``rows`` in the order of ``ids`` (rows not named are left out)."""
    by_id = {row.id: row for row in rows}
    return [by_id[i] for i in ids if i in by_id]
