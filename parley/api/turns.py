"""Turns over REST: ``POST /api/v1/turns/{request_id}/cancel`` stops a running turn from anywhere.

It does what a ``cancel`` frame naming the turn does on any connection of the same customer (docs/protocol.md
section 5), also for a turn no connection follows any more. Another customer's turn is answered as one
that does not exist.
"""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from parley.api.deps import AppRuntime, CurrentCustomer
from parley.api.errors import ApiError
from parley.cluster import ClusterUnavailable

router = APIRouter(tags=["turns"])
NOT_RUNNING = "No running turn of yours has that request_id."


class CancelOut(BaseModel):
    request_id: str
    status: str = Field(description="cancelling: the turn stops now and ends as cancelled")


@router.post(
    "/turns/{request_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        404: {"description": "No running turn of yours has that request_id"},
        503: {"description": "cluster_unavailable: the turn may run on another process, and Redis is down"},
    },
)
async def cancel_turn(request_id: str, customer: CurrentCustomer, runtime: AppRuntime) -> CancelOut:
    """Stop your running (or waiting) turn with this ``request_id``, whichever connection started it.

    202: it was running and stops now; its followers get ``cancelled``, ``dbOperationExecuted`` and the
    final event, and the partial answer is stored as ``cancelled``. 404: no turn of yours with that id is
    running (it ended, or never was).
    """
    found = runtime.streams.find(customer.customer_id, request_id)
    if found is not None and found.cancel is not None and not found.replica:
        found.cancel()
    elif runtime.cluster is None or (found is not None and found.ended):
        raise ApiError("turn_not_found", NOT_RUNNING)
    else:  # it may run on another process (parley/cluster/)
        try:
            cancelling = await runtime.cluster.cancel(customer.customer_id, request_id)
        except ClusterUnavailable as exc:
            raise ApiError(exc.code, exc.message) from None
        if not cancelling:
            raise ApiError("turn_not_found", NOT_RUNNING)
    return CancelOut(request_id=request_id, status="cancelling")
