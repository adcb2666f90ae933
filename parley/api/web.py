"""The built-in chat page: ``/`` and its assets under ``/assets``, and (``--dev`` only) the dev token.

The page (parley/web/) is a client of the public API like any other; the server adds nothing for it but
the files and, on a dev server, a way for it to sign itself in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from starlette.middleware.gzip import GZipMiddleware
from starlette.staticfiles import StaticFiles

from parley.api.deps import AppRuntime
from parley.api.errors import ApiError, error_responses
from parley.auth import DEV_CUSTOMER, DEV_TOKEN_TTL_S, settings_token

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})

# Model output is untrusted: even if the page's rendering let markup through, nothing inline would run,
# and no image could carry the conversation to another host.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

# Cross-origin isolation: nothing of another origin may load, and performance.now() gets its fine resolution
# (the page measures its own render time per delta).
ISOLATED = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}

page_router = APIRouter(include_in_schema=False)
dev_router = APIRouter(tags=["dev"])


@page_router.api_route("/", methods=["GET", "HEAD"])
async def index() -> FileResponse:
    headers = {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache", **ISOLATED}
    return FileResponse(WEB_DIR / "index.html", headers=headers)


class Assets(StaticFiles):
    """The page's files, revalidated at every load (by ETag): after an upgrade, a browser never runs
    yesterday's modules with today's page."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


@dev_router.get("/dev/token", responses=error_responses(404))
async def dev_token(request: Request, runtime: AppRuntime) -> dict[str, str]:
    """Dev server only (``parley serve --dev``; elsewhere this route does not exist): a token for customer 1,
    valid 7 days, so the built-in page signs itself in. Only for a request addressed to the server by a
    loopback name or its configured host: a page of another site that rebinds its own name to 127.0.0.1
    (DNS rebinding) gets 404."""
    if request.url.hostname not in {*LOOPBACK_NAMES, runtime.settings.host}:
        raise ApiError("not_found", "Not Found")
    token = settings_token(runtime.settings, DEV_CUSTOMER, DEV_TOKEN_TTL_S)
    return {"token": token, "customer_id": DEV_CUSTOMER}


def install(app: FastAPI, dev: bool) -> None:
    """Serve the page at ``/`` and its files at ``/assets``; the dev token route only on a dev server."""
    app.include_router(page_router)
    app.mount("/assets", GZipMiddleware(Assets(directory=WEB_DIR)), name="assets")
    if dev:
        app.include_router(dev_router, prefix="/api/v1")
