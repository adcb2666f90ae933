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

router = APIRouter(tags=["turns"])


class CancelOut(BaseModel):
    request_id: str
    status: str = Field(description="cancelling: the turn stops now and ends as cancelled")


@router.post(
    "/turns/{request_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"description": "No running turn of yours has that request_id"}},
)
async def cancel_turn(request_id: str, customer: CurrentCustomer, runtime: AppRuntime) -> CancelOut:
    """Stop your running (or waiting) turn with this ``request_id``, whichever connection started it.

    202: it was running and stops now; its followers get ``cancelled``, ``dbOperationExecuted`` and the
    final event, and the partial answer is stored as ``cancelled``. 404: no turn of yours with that id is
    running (it ended, or never was).
    """
    found = runtime.streams.find(customer.customer_id, request_id)
    if found is None or found.cancel is None:
        raise ApiError("turn_not_found", "No running turn of yours has that request_id.")
    found.cancel()
    return CancelOut(request_id=request_id, status="cancelling")
