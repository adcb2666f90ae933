"""Dependencies a route can ask for by type: ``CurrentCustomer``, ``AppRuntime``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from parley.api.errors import ApiError
from parley.auth import AuthError, Identity, token_from
from parley.services import Runtime, runtime_of


def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


AppRuntime = Annotated[Runtime, Depends(get_runtime)]


# Declares the scheme in the OpenAPI description (the "Authorize" button at /docs); the header is read below.
bearer = HTTPBearer(auto_error=False, description="A JWT: `parley token --customer-id N` mints one")


def get_identity(
    request: Request, runtime: AppRuntime, _scheme: Annotated[object, Depends(bearer)] = None
) -> Identity:
    token = token_from({}, request.headers)
    try:
        return runtime.verifier.verify(token)
    except AuthError:
        raise ApiError(
            "unauthorized",
            "A valid bearer token is required.",
            headers={"WWW-Authenticate": "Bearer"},
        ) from None


CurrentCustomer = Annotated[Identity, Depends(get_identity)]
