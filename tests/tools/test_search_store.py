"""search_sessions against the real store: a customer's search never sees another customer's messages."""

from __future__ import annotations

import json

from parley.tools import ToolCall, ToolContext, ToolRegistry, builtin_tools
from tests.conftest import LiveServer
from tests.history_helpers import completed, fresh_customer


async def test_search_sessions_sees_only_the_customers_messages(sqlite_server: LiveServer) -> None:
    alice, bob = fresh_customer(), fresh_customer()
    for customer, prompt in ((alice, "Alice plans a parsnip soup"), (bob, "Bob hides a parsnip pie")):
        async with await sqlite_server.client(customer) as client:
            await completed(client, prompt, options={"text": "Noted."})
    registry = ToolRegistry(builtin_tools())
    context = ToolContext(customer_id=alice, search=sqlite_server.store.search.messages)

    result = await registry.run(ToolCall("c1", "search_sessions", {"query": "parsnip"}), context)

    assert not result.is_error
    [hit] = json.loads(result.output)["results"]
    assert hit["role"] == "user"
    assert hit["snippet"] == "Alice plans a parsnip soup"
    assert "Bob" not in result.output
