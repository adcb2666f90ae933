"""PROTOCOL invariant 10: the answer is written at start, at checkpoints and at the end — never per token."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from tests.conftest import LiveServer


async def test_no_per_token_writes(server: LiveServer) -> None:
    """Counted as write transactions (each turn write is one) and as statements (the writers' prepared
    statements are reported to ``before_cursor_execute`` listeners too)."""
    writes: list[str] = []
    transactions: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # On PostgreSQL a statement may write through a CTE (``WITH finished AS (UPDATE chat_messages``).
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE", "WITH")):
            writes.append(" ".join(statement.split()))

    def begin(_conn: Any) -> None:
        transactions.append("BEGIN")

    engine = server.store.write_engine
    event.listen(engine, "begin", begin)
    event.listen(engine, "before_cursor_execute", count)
    try:
        async with await server.client() as client:
            # 300 deltas over about 1.5 s: per-token writes would show as hundreds of UPDATEs.
            rid = await client.chat("count my writes", options={"chunks": 300, "delay_ms": 5})
            summary = await client.turn(rid)
    finally:
        event.remove(engine, "begin", begin)
        event.remove(engine, "before_cursor_execute", count)
    assert summary.status == "completed"
    assert len([e for e in summary.events if e["type"] == "text"]) == 300
    # The start, the end, and at most a few checkpoints (about one per second of streaming).
    assert 2 <= len(transactions) <= 6, transactions
    message_updates = [w for w in writes if "UPDATE chat_messages" in w]
    assert 1 <= len(message_updates) <= 5, writes
    assert len(writes) <= 12, writes
