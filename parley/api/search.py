"""``GET /api/v1/search``: full-text search over the customer's messages, ranked, with snippets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from parley.api.deps import AppRuntime, CurrentCustomer
from parley.api.errors import error_responses
from parley.api.schemas import SearchHitOut, SearchPage, Text
from parley.store.pagination import MAX_OFFSET, decode_offset_cursor, encode_offset_cursor

router = APIRouter(tags=["search"])


@router.get("/search", responses=error_responses(400))
async def search_messages(
    customer: CurrentCustomer,
    runtime: AppRuntime,
    q: Annotated[Text, Query(min_length=1, max_length=500, description="Words to find (each as a prefix)")],
    limit: Annotated[int, Query(ge=1, le=50)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the previous page")
    ] = None,
) -> SearchPage:
    """Your messages containing every word of ``q`` (as word prefixes, any case), best match first.

    Each hit names its session and message and carries an HTML-escaped ``snippet`` with the matching
    words in ``<mark>…</mark>``. Messages are searchable once they finished streaming.
    """
    filters = [q]
    offset = decode_offset_cursor(cursor, filters) if cursor else 0
    hits = await runtime.store.search.messages(customer.customer_id, q, limit + 1, offset)
    more = len(hits) > limit and offset + limit <= MAX_OFFSET
    return SearchPage(
        items=[SearchHitOut.model_validate(hit, from_attributes=True) for hit in hits[:limit]],
        next_cursor=encode_offset_cursor(offset + limit, filters) if more else None,
    )
