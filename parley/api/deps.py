"""Dependencies a route can ask for by type: ``CurrentCustomer``, ``AppRuntime``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from parley.app import Runtime, runtime_of
from parley.auth import AuthError, Identity, token_from


def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


AppRuntime = Annotated[Runtime, Depends(get_runtime)]


def get_identity(request: Request, runtime: AppRuntime) -> Identity:
    token = token_from({}, request.headers)
    try:
        return runtime.verifier.verify(token)
    except AuthError:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="A valid bearer token is required.",
            headers={"WWW-Authenticate": "Bearer"},
        ) from None


CurrentCustomer = Annotated[Identity, Depends(get_identity)]
