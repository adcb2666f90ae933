"""``GET /api/v1/models``: the model names this server routes, by provider, and whether each can answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from parley.api.deps import AppRuntime, CurrentCustomer

router = APIRouter(tags=["models"])


@router.get("/models")
async def list_models(_customer: CurrentCustomer, runtime: AppRuntime) -> dict[str, Any]:
    """Every provider endpoint: model patterns, aliases, key variable, and whether it is configured.

    ``served_by`` is the provider that answers: the endpoint itself, ``demo`` for an unconfigured one on a
    dev server, or null (requests get ``provider_not_configured``). Keys are never shown.
    """
    return {"providers": runtime.services.registry.describe()}
